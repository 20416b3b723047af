"""Tensor and expert parallelism on gloo (CPU): sharded logits and engine tokens equal one process's, the
per-rank bytes equal the planner's, and the layout's arithmetic.

The model: a tiny K2 with q LoRA, group-limited routing and a dense first layer, in an FP8 checkpoint whose
dims make some shards block-aligned (kept FP8) and others not (loaded dequantized). Weights have ~unit gain so
greedy paths that differ only in float rounding pick the same tokens. Each layout starts its worker processes
once (module fixtures); rank 0 is this process.
"""

from __future__ import annotations

import re

import pytest
import torch

from kimi_k2.checkpoint.loader import load_model
from kimi_k2.checkpoint.writer import save_model
from kimi_k2.config import ModelConfig
from kimi_k2.engine.llm import LLM
from kimi_k2.engine.model_runner import FP8Linear, ModelRunner, StepChunk
from kimi_k2.engine.paged_cache import PagedLatentPool
from kimi_k2.engine.sampling_params import SamplingParams
from kimi_k2.model.transformer import random_model
from kimi_k2.parallel.config import ParallelConfig
from kimi_k2.parallel.layout import WHOLE, Shard, shard_of
from kimi_k2.parallel.shard import ExpertElsewhere
from kimi_k2.planner.ranks import rank_plan, step_collectives
from tests.test_planner_cpu import engine_weight_bytes_of
from tests.unit_gain import unit_gain_


def parallel_config() -> ModelConfig:
    return ModelConfig(
        vocab_size=510, hidden_size=128, intermediate_size=256, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=8, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        n_group=2, topk_group=1, first_k_dense_replace=1, q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=48,
        qk_rope_head_dim=16, v_head_dim=16, max_position_embeddings=256, bos_token_id=None, eos_token_id=None,
        torch_dtype="float32",
    )  # fmt: skip


@pytest.fixture(scope="module")
def fp8_checkpoint(tmp_path_factory):
    model = unit_gain_(random_model(parallel_config(), seed=3), seed=3)
    return save_model(model, tmp_path_factory.mktemp("parallel") / "fp8", fmt="fp8")


ENGINE = dict(num_kv_blocks=22, block_size=4, max_num_batched_tokens=16)  # 88 slots for ~5 × 30: preemption
GREEDY = SamplingParams(temperature=0, max_tokens=12)


def step_logits(llm: LLM) -> torch.Tensor:
    """One step of two prefill chunks straight through the runner (blocks outside what the engine will use)."""
    first, second = list(range(5, 25)), list(range(300, 317))
    chunks = [StepChunk(first, 0, [10, 11, 12, 13, 14], True), StepChunk(second, 0, [15, 16, 17, 18, 19], True)]
    return llm.engine.runner.execute(chunks).clone()


def engine_tokens(llm: LLM) -> tuple[dict[str, list[int]], object]:
    """Staggered arrivals, chunked prefill, shared prefixes (prefix-cache hits) and a pool too small for all:
    the token ids of every request, and the engine's stats."""
    gen = torch.Generator().manual_seed(7)
    system = torch.randint(0, 510, (13,), generator=gen).tolist()
    user = [torch.randint(0, 510, (n,), generator=gen).tolist() for n in (5, 9, 3, 11, 6)]
    arrivals = {0: ["a", "b"], 2: ["c"], 3: ["d"], 6: ["e"]}
    prompts = {rid: system + user[i] for i, rid in enumerate("abcde")}
    core, out, step = llm.engine, {}, 0
    while step <= max(arrivals) or core.has_unfinished():
        for rid in arrivals.get(step, []):
            core.add_request(rid, prompts[rid], GREEDY)
            out[rid] = []
        for delta in core.step():
            out[delta.request_id] += delta.token_ids
        step += 1
    return out, core.stats()


@pytest.fixture(scope="module")
def single(fp8_checkpoint):
    llm = LLM(fp8_checkpoint, num_threads=1, **ENGINE)
    logits = step_logits(llm)
    tokens, stats = engine_tokens(llm)
    return logits, tokens, stats


LAYOUTS = {
    "tp2": dict(tensor_parallel_size=2),
    "tp2-ep": dict(tensor_parallel_size=2, enable_expert_parallel=True),
    "tp2-ep-alltoall": dict(tensor_parallel_size=2, enable_expert_parallel=True, moe_combine="alltoall"),
    "tp4-ep4": dict(tensor_parallel_size=4, enable_expert_parallel=True),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_logits_and_engine_tokens_match_one_process(fp8_checkpoint, single, layout):
    ref_logits, ref_tokens, ref_stats = single
    with LLM(fp8_checkpoint, num_threads=1, distributed_timeout_s=120, **LAYOUTS[layout], **ENGINE) as llm:
        logits = step_logits(llm)
        tokens, stats = engine_tokens(llm)
    assert (logits - ref_logits).abs().max() <= 1e-5 * ref_logits.abs().max()
    assert tokens == ref_tokens
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    assert (stats.num_preemptions, stats.prefix_cache_hits) == (ref_stats.num_preemptions, ref_stats.prefix_cache_hits)


# ---------------------------------------------------------------------- per-rank memory, without processes
@pytest.mark.parametrize(("world", "ep"), [(2, False), (2, True), (4, True)])
def test_each_rank_holds_the_planners_bytes_and_no_full_copy_of_the_experts(fp8_checkpoint, world, ep):
    """Every rank's shard, loaded in this process (loading needs no process group), against `rank_plan`."""
    cfg = parallel_config()
    plan = rank_plan(cfg, "fp8", world, expert_parallel=ep, compute_bytes=4)
    for rank in range(world):
        pc = ParallelConfig(world, rank, ep)
        model = load_model(fp8_checkpoint, weights="auto", parallel=pc)
        runner = ModelRunner(model, PagedLatentPool(cfg, 4, 4))
        held = engine_weight_bytes_of(model, runner)
        assert abs(held - plan.weight_bytes) <= 0.02 * plan.weight_bytes, (rank, held, plan.weight_bytes)
        for layer in model.model.layers[cfg.first_k_dense_replace :]:
            experts = layer.mlp.experts
            held_experts = [e for e in experts if not isinstance(e, ExpertElsewhere)]
            if ep:
                assert len(held_experts) == cfg.n_routed_experts // world
            else:
                assert all(e.gate_proj.out_features == cfg.moe_intermediate_size // world for e in held_experts)
        # a 128-aligned shard stays FP8 (q_b_proj: 8 heads × 64 rows = 256 or 128 a rank); o_proj's 64 or 32
        # inputs a rank are not on a 128 block boundary: loaded dequantized
        attention = model.model.layers[0].self_attn
        assert isinstance(attention.q_b_proj, FP8Linear) and not isinstance(attention.o_proj, FP8Linear)


@pytest.mark.parametrize("fmt", ["fp8", "int4"])
def test_each_rank_loads_exactly_its_slice_of_every_weight(tmp_path, fmt):
    """Cut as stored (FP8 blocks, INT4 words and groups) or dequantized where unaligned, every weight of every rank
    holds exactly the values of its slice of the whole model's."""
    from torch import nn

    from kimi_k2.kernels.weight import weight_of
    from kimi_k2.model.quant_linear import Int4Linear

    cfg = parallel_config()
    path = save_model(unit_gain_(random_model(cfg, seed=5), seed=5), tmp_path / fmt, fmt=fmt)
    whole = load_model(path, weights="dequantize").state_dict()  # float32
    kept = 0
    for pc in (ParallelConfig(2, 1), ParallelConfig(2, 0, expert_parallel=True), ParallelConfig(4, 3)):
        part = load_model(path, weights="auto", parallel=pc)
        for name, module in part.named_modules():
            if not isinstance(module, (nn.Linear, nn.Embedding, FP8Linear, Int4Linear)):
                continue
            kept += isinstance(module, (FP8Linear, Int4Linear))
            got = module.weight.float() if isinstance(module, nn.Embedding) else weight_of(module).dense()
            shard = shard_of(f"{name}.weight", cfg, pc)
            expected = whole[f"{name}.weight"]
            if shard.dim is not None:
                expected = expected.narrow(shard.dim, shard.start, shard.size)
            assert torch.equal(got, expected), name
    assert kept > 0  # some shards stay in the stored format


def test_sharded_model_refuses_its_single_process_forward(fp8_checkpoint):
    model = load_model(fp8_checkpoint, weights="auto", parallel=ParallelConfig(2, 1))
    with pytest.raises(RuntimeError, match="one rank's shard"):
        model(torch.tensor([[1, 2, 3]]))


# ---------------------------------------------------------------------- layout arithmetic
def test_shard_layout_of_k2_names():
    cfg = parallel_config()
    tp, ep = ParallelConfig(2, 1), ParallelConfig(2, 1, expert_parallel=True)
    assert shard_of("model.layers.1.self_attn.q_b_proj.weight", cfg, tp) == Shard(0, 256, 512)  # heads 4-7 × 64
    assert shard_of("model.layers.1.self_attn.kv_b_proj.weight", cfg, tp) == Shard(0, 256, 512)  # × (48 + 16)
    assert shard_of("model.layers.1.self_attn.o_proj.weight", cfg, tp) == Shard(1, 64, 128)  # inputs, heads × 16
    assert shard_of("model.layers.1.self_attn.q_a_proj.weight", cfg, tp) is WHOLE
    assert shard_of("model.layers.1.self_attn.kv_a_proj_with_mqa.weight", cfg, tp) is WHOLE
    assert shard_of("model.layers.1.mlp.gate.weight", cfg, tp) is WHOLE
    assert shard_of("model.layers.0.mlp.down_proj.weight", cfg, tp) == Shard(1, 128, 256)
    assert shard_of("model.layers.1.mlp.shared_experts.up_proj.weight", cfg, tp) == Shard(0, 16, 32)
    assert shard_of("model.layers.1.mlp.experts.3.up_proj.weight", cfg, tp) == Shard(0, 16, 32)
    assert shard_of("model.layers.1.mlp.experts.3.up_proj.weight", cfg, ep) is None  # rank 0's
    assert shard_of("model.layers.1.mlp.experts.5.down_proj.weight", cfg, ep) is WHOLE
    assert shard_of("lm_head.weight", cfg, tp) == Shard(0, 255, 510)
    assert shard_of("model.embed_tokens.weight", cfg, ParallelConfig(4, 3)) == Shard(0, 384, 510)  # ceil(510/4)


def test_parallel_config_names_the_field_it_cannot_split():
    cfg = parallel_config()
    with pytest.raises(ValueError, match="num_attention_heads=8"):
        ParallelConfig(3).check(cfg)
    with pytest.raises(ValueError, match="moe_intermediate_size=32.*expert-parallel"):
        ParallelConfig(64).check(cfg.replace(num_attention_heads=64, num_key_value_heads=64, n_shared_experts=2))
    with pytest.raises(ValueError, match="needs expert_parallel"):
        ParallelConfig(2, moe_combine="alltoall")
    ParallelConfig(8, expert_parallel=True).check(cfg)


def test_step_collectives_formula():
    cfg = parallel_config()
    calls = step_collectives(cfg, 2, tokens=3, sampled=2)
    assert calls["all_reduce"] == (7, 7 * 3 * 128 * 4)  # embedding + 2 per layer
    assert calls["gather"] == (1, 2 * 255 * 4)
    assert calls["broadcast"][0] == 2


def test_plan_prints_the_launch_command_of_its_layout():
    from kimi_k2.config import preset
    from kimi_k2.planner.hardware import gpu
    from kimi_k2.planner.plan import make_plan

    plan = make_plan(preset("kimi-k2"), gpu("h200"), model="kimi-k2", weights="fp8", context=8192, gpus=16)
    assert plan.fit.fits
    assert plan.launch is not None and plan.launch.startswith("torchrun --nnodes 2 --nproc-per-node 8 ")
    assert "--tensor-parallel-size 16 --enable-expert-parallel" in plan.launch
    one_host = make_plan(preset("medium"), gpu("h100"), model="/ckpt/medium", weights="bf16", context=4096, gpus=2)
    assert one_host.launch == "kimi-k2 serve --model /ckpt/medium --tensor-parallel-size 2 --enable-expert-parallel --device cuda"


def test_gpu_check_script_runs_on_the_cpu():
    """bench/gpu_check.py is the GPU machine's one prepared script; here it runs with --device cpu (tiny preset)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--preset", "tiny", "--tokens", "4",
                           "--check-tokens", "4"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # ours must agree with the float32 reference; HF's bf16 CPU path is the peer's (its agreement depends on its
    # kernels and this CPU's bf16 support: 2 or 4 of 4 on the machines seen), so it is reported, not asserted
    assert re.search(r"\| greedy tokens equal to CPU float32 \(first 4\) \| 4 \| [0-4] \|", done.stdout), done.stdout
    assert "decode tok/s" in done.stdout

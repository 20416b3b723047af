"""The engine against the plain greedy loop on the `tiny` preset: exact tokens under continuous batching, chunked
prefill, prefix-cache hits and forced preemption; the fast runner against the reference runner; seeded sampling.

The tiny model gets weights of ~unit-gain scale (not N(0, 0.02)) so its logits are far from ties and greedy
paths that differ only in float rounding pick the same tokens.
"""

from __future__ import annotations

import copy

import pytest
import torch

from kimi_k2.config import preset
from kimi_k2.engine.core import EngineCore
from kimi_k2.engine.llm import LLM
from kimi_k2.engine.model_runner import ModelRunner, StepChunk
from kimi_k2.engine.paged_cache import PagedLatentPool
from kimi_k2.engine.sampling_params import SamplingParams
from kimi_k2.model.generate import greedy_decode
from kimi_k2.model.transformer import random_model
from tests.threads import one_thread  # noqa: F401  (autouse: one torch thread in this module)
from tests.unit_gain import unit_gain_

GREEDY = SamplingParams(temperature=0, max_tokens=10)


def tiny_model(seed: int = 0):
    return unit_gain_(random_model(preset("tiny"), seed=seed), seed).eval()




@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def reference(model):
    """Plain full-forward greedy loop (no cache) on an untouched copy of the weights."""
    ref = copy.deepcopy(model)
    cache: dict[tuple[int, ...], list[int]] = {}

    def run(prompt: list[int], n: int = GREEDY.max_tokens) -> list[int]:
        key = (*prompt, -n)
        if key not in cache:
            cache[key] = greedy_decode(ref, prompt, n, use_cache=False)
        return cache[key]

    return run


def prompts(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 512, (n,), generator=gen).tolist() for n in lengths]


def run_to_completion(core: EngineCore, arrivals: dict[int, list[tuple[str, list[int]]]], params=GREEDY):
    """Add requests at the given step numbers; step until all finish. Returns {request_id: token ids}."""
    out: dict[str, list[int]] = {}
    step = 0
    while step <= max(arrivals) or core.has_unfinished():
        for rid, prompt in arrivals.get(step, []):
            core.add_request(rid, prompt, params)
            out[rid] = []
        for delta in core.step():
            out[delta.request_id] += delta.token_ids
        step += 1
    return out


@pytest.mark.parametrize("runner", ["fast", "reference"])
def test_staggered_batch_with_chunked_prefill_matches_greedy_loop(model, reference, runner):
    ps = prompts([3, 29, 11, 45, 1])
    core = EngineCore(model, num_kv_blocks=64, block_size=4, max_num_batched_tokens=16, runner=runner)
    arrivals = {0: [("a", ps[0]), ("b", ps[1])], 2: [("c", ps[2])], 3: [("d", ps[3])], 7: [("e", ps[4])]}
    out = run_to_completion(core, arrivals)
    for rid, prompt in zip("abcde", ps):
        assert out[rid] == reference(prompt), rid
    assert core.stats().kv_blocks_used == 0


def test_prefix_cache_hits_give_the_same_tokens(model, reference):
    system = prompts([37], seed=1)[0]
    users = prompts([5, 9, 2], seed=2)
    core = EngineCore(model, num_kv_blocks=64, block_size=4)
    first = run_to_completion(core, {0: [("first", system + users[0])]})
    assert first["first"] == reference(system + users[0])
    hits_before = core.stats().prefix_cache_hits
    arrivals = {0: [("x", system + users[1]), ("y", system + users[2])], 1: [("z", system + users[0])]}
    deltas = []
    step = 0
    while step < 2 or core.has_unfinished():
        for rid, p in arrivals.get(step, []):
            core.add_request(rid, p, GREEDY)
        deltas += core.step()
        step += 1
    tokens = {rid: [t for d in deltas if d.request_id == rid for t in d.token_ids] for rid in "xyz"}
    assert tokens == {"x": reference(system + users[1]), "y": reference(system + users[2]), "z": first["first"]}
    cached = {d.request_id: d.num_cached_tokens for d in deltas if d.finished}
    assert cached["x"] == cached["y"] == 36  # 9 full blocks of the 37-token system prompt
    assert cached["z"] == 40  # the whole first conversation's full blocks
    assert core.stats().prefix_cache_hits - hits_before == 36 + 36 + 40


def test_forced_preemption_resumes_exactly(model, reference):
    ps = prompts([10, 14, 7, 12], seed=3)
    params = SamplingParams(temperature=0, max_tokens=16)
    core = EngineCore(model, num_kv_blocks=14, block_size=4, max_num_batched_tokens=64)  # 56 slots, 4 × ~26 needed
    out = run_to_completion(core, {0: [(str(i), p) for i, p in enumerate(ps)]}, params)
    assert core.stats().num_preemptions > 0
    for i, p in enumerate(ps):
        assert out[str(i)] == reference(p, 16), i
    assert core.stats().kv_blocks_used == 0


def test_fast_runner_logits_match_reference_runner(model):
    cfg = model.config
    fast_pool, ref_pool = PagedLatentPool(cfg, 32, 4), PagedLatentPool(cfg, 32, 4)
    fast = ModelRunner(model, fast_pool, mode="fast", prefill_attention="auto")
    ref = ModelRunner(model, ref_pool, mode="reference")
    a, b, c = prompts([13, 70, 9], seed=4)
    tables = {"a": [0, 1, 2, 3], "b": list(range(4, 22)), "c": [30, 29, 28]}
    first = [StepChunk(a, 0, tables["a"], True), StepChunk(c[:5], 0, tables["c"], False)]
    for runner in (fast, ref):
        runner.execute(first)
    # decode for a, a long chunk (naive prefill path) for b, the rest of c's prompt (absorbed chunk)
    second = [StepChunk([7], 13, tables["a"], True), StepChunk(b, 0, tables["b"], True), StepChunk(c[5:], 5, tables["c"], True)]
    got, want = fast.execute(second), ref.execute(second)
    assert got.shape == want.shape == (3, cfg.vocab_size)
    assert (got - want).abs().max() <= 1e-4 * max(1.0, want.abs().max().item())
    assert torch.allclose(fast_pool.kv, ref_pool.kv, atol=1e-5)
    for path in ("absorbed", "naive"):  # both prefill paths on the same chunk
        fast.prefill_attention = path
        again = fast.execute([StepChunk(b[:40], 0, list(range(4, 14)), True)])
        assert (again - ref.execute([StepChunk(b[:40], 0, list(range(4, 14)), True)])).abs().max() <= 1e-4 * max(
            1.0, want.abs().max().item()
        )
    fast.prefill_attention = "auto"


def test_fast_runner_keeps_the_checkpoint_modules_working():
    model = tiny_model(seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([prompts([12], seed=6)[0]])
    logits_before = model(ids)
    EngineCore(model, num_kv_blocks=8, block_size=4)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.allclose(model(ids), logits_before, rtol=1e-5, atol=1e-5)  # same values, other BLAS layout
    experts = model.model.layers[1].mlp.experts
    assert experts[3].up_proj.weight.untyped_storage().data_ptr() == experts[0].gate_proj.weight.untyped_storage().data_ptr()
    # the prepared tensors keep the checkpoint's [out, in] layout: every module weight is a contiguous view
    assert all(v.is_contiguous() for v in after.values())


def test_seeded_sampling_is_reproducible_and_batch_independent(model):
    p, others = prompts([9], seed=7)[0], prompts([4, 17, 30], seed=8)
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=1234, max_tokens=12)
    alone = LLM(model, num_kv_blocks=64, block_size=4).generate([p], params)[0].token_ids
    again = LLM(model, num_kv_blocks=64, block_size=4).generate([p], params)[0].token_ids
    assert alone == again
    crowd_params = [SamplingParams(temperature=1.0, seed=i, max_tokens=20) for i in range(3)]
    crowded = LLM(model, num_kv_blocks=64, block_size=4).generate([*others, p], [*crowd_params, params])
    assert crowded[-1].token_ids == alone
    other_seed = LLM(model, num_kv_blocks=64, block_size=4).generate([p], SamplingParams(temperature=0.9, seed=99, max_tokens=12))
    assert other_seed[0].token_ids != alone


def test_logprobs_are_the_models_distribution(model, reference):
    p = prompts([6], seed=9)[0]
    out = LLM(model, num_kv_blocks=16, block_size=4).generate([p], SamplingParams(temperature=0, max_tokens=3, logprobs=2))[0]
    assert out.token_ids == reference(p, 3)
    assert out.logprobs is not None and len(out.logprobs) == 3
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([p + out.token_ids[:2]]))[0, -3:].float(), -1)
    for i, entry in enumerate(out.logprobs):
        assert entry.token_id == out.token_ids[i] == entry.top[0][0]
        assert len(entry.top) == 2 and entry.top[0][1] >= entry.top[1][1]
        assert abs(entry.logprob - full[i, entry.token_id].item()) < 1e-4


def test_abort_frees_blocks_and_ends_the_stream(model):
    llm = LLM(model, num_kv_blocks=32, block_size=4)
    stream = llm.stream(prompts([20], seed=10)[0], SamplingParams(temperature=0, max_tokens=50))
    first = next(stream)
    assert llm.stats().kv_blocks_used > 0
    final = llm.engine.abort(first.request_id)
    assert final is not None and final.finished and final.finish_reason == "abort"
    assert llm.stats().kv_blocks_used == 0
    stream.close()


def test_stop_token_ids_and_max_tokens(model, reference):
    p = prompts([8], seed=11)[0]
    ref = reference(p, 10)
    llm = LLM(model, num_kv_blocks=16, block_size=4)
    out = llm.generate([p], SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[ref[3]]))[0]
    assert out.token_ids == ref[: ref.index(ref[3]) + 1] and out.finish_reason == "stop"
    assert out.stop_reason == ref[3]
    late = llm.generate([p], SamplingParams(temperature=0, max_tokens=10, min_tokens=3, stop_token_ids=[ref[0]]))[0]
    first_allowed = next(i for i in range(2, 10) if ref[i] == ref[0]) if ref[0] in ref[2:] else 9
    assert late.token_ids == ref[: first_allowed + 1]
    short = llm.generate([p], SamplingParams(temperature=0, max_tokens=4))[0]
    assert short.token_ids == ref[:4] and short.finish_reason == "length"
    with pytest.raises(ValueError, match="context limit"):
        llm.generate([[1] * 600])


def test_step_meta_moves_every_tensor_to_the_pool_device():
    """The runner builds a step's indices on the CPU and moves them to the pool's device in one place."""
    from kimi_k2.engine.model_runner import build_meta

    chunks = [StepChunk([5], 3, [0], True), StepChunk([1, 2], 0, [1], True), StepChunk([7, 8, 9], 2, [2], False)]
    meta = build_meta(chunks, 4)
    assert meta.to(torch.device("cpu")) is meta
    moved = meta.to(torch.device("meta"))
    tensors = [moved.input_ids, moved.positions, moved.write_slots, moved.decode_key_slots, moved.logit_rows]
    tensors += [t for _, _, slots, mask in moved.prefills for t in (slots, mask) if t is not None]
    assert all(t.device.type == "meta" for t in tensors) and len(moved.prefills) == 2

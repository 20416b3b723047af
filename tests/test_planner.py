"""Planner: the published K2 figures (SPEC §1, §8), fit verdicts, and the `kimi-k2 plan` command."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from kimi_k2.cli import main
from kimi_k2.config import preset
from kimi_k2.planner.fit import Workload, fit, layer_bytes, min_gpus, offload_plan, pipeline_stages
from kimi_k2.planner.formats import FORMATS, fp8_linear_bytes, int4_linear_bytes, resolve_format, weight_bytes
from kimi_k2.planner.hardware import GPUS, gpu
from kimi_k2.planner.kv import kv_bytes, kv_bytes_per_token, kv_pool_blocks, per_head_kv_bytes_per_token
from kimi_k2.planner.params import count_params
from kimi_k2.planner.speed import decode_tokens_per_s_bound, distinct_experts, prefill_tokens_per_s_bound
from kimi_k2.planner.tensors import model_tensors

K2 = preset("kimi-k2")
CTX_128K = 131072


def deepseek_v3_like():
    return K2.replace(num_attention_heads=128, num_key_value_heads=128, n_routed_experts=256, n_group=8, topk_group=4)


@pytest.mark.parametrize(
    "cfg",
    [K2, preset("tiny"), preset("medium"), preset("tiny").replace(q_lora_rank=None), deepseek_v3_like(),
     preset("tiny").replace(attention_bias=True, tie_word_embeddings=True)],
)  # fmt: skip
def test_tensor_inventory_matches_param_counts(cfg):
    assert sum(t.numel * t.count for t in model_tensors(cfg)) == count_params(cfg).total


def test_k2_parameters_total_and_active():
    counts = count_params(K2)
    assert counts.total == 1_026_408_232_448
    assert round(counts.active / 1e9, 1) == 32.9


def test_fp8_checkpoint_bytes_match_the_official_release():
    fp8 = weight_bytes(K2, "fp8")
    assert abs(fp8 - 1_029.2e9) / 1_029.2e9 < 1e-4
    assert round(fp8 / 2**30, 1) == 958.5


def test_bf16_and_k2_thinking_int4_bytes():
    assert round(weight_bytes(K2, "bf16") / 1e9, 1) == 2_052.8
    assert round(weight_bytes(K2, "int4") / 1e9) == 594
    assert weight_bytes(K2, "k2-thinking") == weight_bytes(K2, "int4")


def test_fp32_and_bf16_are_whole_model_widths():
    tiny = preset("tiny")
    params = count_params(tiny).total
    fp32_bias = tiny.num_moe_layers * tiny.n_routed_experts  # e_score_correction_bias stays float32
    assert weight_bytes(tiny, "fp32") == 4 * params
    assert weight_bytes(tiny, "bf16") == 2 * params + 2 * fp32_bias


def test_block_and_group_scales_round_up():
    assert fp8_linear_bytes(576, 7168) == 576 * 7168 + 4 * 5 * 56  # ceil(576/128) = 5 scale rows
    assert int4_linear_bytes(2048, 7168) == 4 * 2048 * 896 + 2 * 2048 * 224 + 8
    assert int4_linear_bytes(3, 33) == 4 * 3 * 5 + 2 * 3 * 2 + 8


def test_gguf_sizes_follow_bits_per_weight():
    q8 = weight_bytes(K2, "q8_0")
    assert abs(q8 - 1.09e12) / 1.09e12 < 0.01  # Unsloth's Q8 is 1.09 TB
    assert weight_bytes(K2, "Q2_K") < weight_bytes(K2, "q4_k") < weight_bytes(K2, "q6_k") < q8


def test_unknown_format_lists_known_ones():
    with pytest.raises(ValueError, match="known formats: .*fp8.*q4_k"):
        resolve_format("fp7")


def test_kv_cache_is_the_mla_latent():
    assert kv_bytes_per_token(K2, 2) == 70_272
    assert kv_bytes_per_token(K2, 1) == 35_136
    assert per_head_kv_bytes_per_token(K2, 2) == 2_498_560
    assert round(kv_bytes(K2, CTX_128K) / 1e9, 1) == 9.2
    assert kv_bytes(K2, 1000, batch=3, dtype_bytes=1) == 3 * 1000 * 35_136


def test_kv_pool_blocks_counts_whole_blocks():
    block = 16 * kv_bytes_per_token(K2, 2)
    assert kv_pool_blocks(K2, 10 * block, 16, 2) == 10
    assert kv_pool_blocks(K2, 10 * block - 1, 16, 2) == 9
    assert kv_pool_blocks(K2, -5, 16, 2) == 0
    with pytest.raises(ValueError, match="block_size"):
        kv_pool_blocks(K2, block, 0, 2)


def test_fp8_128k_does_not_fit_8_h200_with_usable_headroom():
    layers = layer_bytes(K2, "fp8")
    for split in ("tp", "ep", "pp"):
        result = fit(K2, layers, gpu("h200"), 8, Workload(CTX_128K), split=split)
        assert not result.fits, split
        assert result.headroom_bytes_per_gpu < 0


@pytest.mark.parametrize("name", ["h200", "h20"])
def test_fp8_128k_fits_16_gpus_moonshots_minimum(name):
    layers = layer_bytes(K2, "fp8")
    result = fit(K2, layers, gpu(name), 16, Workload(CTX_128K), split="tp")
    assert result.fits and result.headroom_bytes_per_gpu > 0
    assert min_gpus(K2, layers, gpu(name), Workload(CTX_128K), split="tp") == 16


def test_two_bit_gguf_needs_about_five_80gb_gpus_or_offload():
    layers = layer_bytes(K2, "q2_k")
    assert min_gpus(K2, layers, gpu("h100"), Workload(CTX_128K), split="pp") == 5
    assert min_gpus(K2, layers, gpu("a100-80gb"), Workload(CTX_128K), split="pp") == 5
    off = offload_plan(K2, layers, gpu("h100"), Workload(CTX_128K))
    assert off.fits_one_gpu and 300e9 < off.ram_bytes < 381e9


def test_tp_count_must_divide_heads():
    result = fit(K2, layer_bytes(K2, "fp8"), gpu("h200"), 12, Workload(4096), split="tp")
    assert not result.fits and "num_attention_heads" in result.error


def test_pipeline_stages_balance_and_cover():
    stages = pipeline_stages([5, 1, 1, 1, 1, 5], 3)
    assert stages[0][0] == 0 and stages[-1][1] == 6 and len(stages) <= 3
    assert max(sum([5, 1, 1, 1, 1, 5][s:e]) for s, e in stages) == 5  # [5] [1 1 1 1] [5]


def test_distinct_experts_grow_from_top_k_to_all():
    assert distinct_experts(K2, 1) == pytest.approx(8)
    assert distinct_experts(K2, 10_000) == pytest.approx(384)


def test_speed_bounds_scale_with_gpus():
    layers = layer_bytes(K2, "fp8")
    one = decode_tokens_per_s_bound(K2, layers, gpu("h200"), Workload(8192), split="tp", n=8)
    two = decode_tokens_per_s_bound(K2, layers, gpu("h200"), Workload(8192), split="tp", n=16)
    assert 0 < one < two
    # a token must at least stream its active weights once: bound <= 8 GPUs' bandwidth / active bytes
    assert one < 8 * 4.8e12 / (count_params(K2).active - 2 * 1_174_405_120)
    assert prefill_tokens_per_s_bound(K2, gpu("h200"), "fp8", n=16, prompt_tokens=8192) > 0
    assert prefill_tokens_per_s_bound(K2, gpu("a100-80gb"), "fp8", n=1, prompt_tokens=8192) == pytest.approx(
        prefill_tokens_per_s_bound(K2, gpu("a100-80gb"), "bf16", n=1, prompt_tokens=8192)
    )  # no FP8 tensor cores: FP8 weights compute at the bf16 rate


def test_hardware_table_has_the_issue_gpus():
    for key in ("h100", "h200", "h800", "h20", "a100-80gb", "b200", "mi300x", "rtx4090", "rtx5090", "m3-ultra", "dgx-spark"):
        assert key in GPUS
    assert not gpu("A100").fp8 and gpu("H200").fp8


# ---------------------------------------------------------------------- the command
def plan_json(capsys, *argv: str) -> dict:
    assert main(["plan", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_json_has_stable_keys_and_k2_figures(capsys):
    out = plan_json(capsys, "--weights", "fp8", "--context", "131072", "--gpu", "h200", "--gpus", "8")
    for key in ("total_params", "active_params", "weight_bytes", "kv_bytes_per_token", "kv_bytes", "fits",
                "min_gpus", "decode_tokens_per_s_bound", "prefill_tokens_per_s_bound", "per_gpu", "offload"):  # fmt: skip
        assert key in out
    assert out["total_params"] == 1_026_408_232_448
    assert out["kv_bytes_per_token"] == 70_272
    assert out["fits"] is False and out["weights_fit"] is True
    assert out["min_gpus"] == 16
    assert out["published_sizes"][0]["bytes"] == 1_029_200_000_000


@pytest.mark.parametrize("name", ["h200", "h20"])
def test_cli_16_gpus_fit(capsys, name):
    out = plan_json(capsys, "--context", "131072", "--gpu", name, "--gpus", "16")
    assert out["fits"] is True and out["per_gpu"]["headroom_bytes"] > 0


def test_cli_tiny_model_and_custom_gpu(capsys):
    out = plan_json(capsys, "--model", "tiny", "--weights", "fp32", "--gpu-mem", "4", "--bandwidth", "0.1", "--gpus", "1")
    assert out["weight_bytes"] == 4 * count_params(preset("tiny")).total
    assert out["gpu"]["memory_bytes"] == 4 * 2**30 and out["fits"] is True


def test_cli_table_labels_upper_bounds(capsys):
    assert main(["plan", "--gpus", "16", "--batch", "4", "--kv-dtype", "fp8"]) == 0
    text = capsys.readouterr().out
    assert "upper bound" in text and "70,272" not in text and "35,136 B" in text and "FITS" in text


def test_cli_unknown_gpu_names_the_known_ones(capsys):
    assert main(["plan", "--gpu", "v100"]) == 1
    err = capsys.readouterr().err
    assert "v100" in err and "h200" in err and "mi300x" in err


def test_planner_imports_no_torch():
    code = "import sys, kimi_k2.planner.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_format_sizes_k2_between_iq1_and_fp32():
    sizes = {f: weight_bytes(K2, f) for f in FORMATS}
    assert min(sizes, key=sizes.get) == "iq1_s" and max(sizes, key=sizes.get) == "fp32"
    assert math.isclose(sizes["int8"], sizes["fp8"], rel_tol=1e-3)


def test_every_split_gives_a_decode_bound():
    layers = layer_bytes(K2, "fp8")
    work = Workload(8192, batch=16)
    bounds = {s: decode_tokens_per_s_bound(K2, layers, gpu("h200"), work, split=s, n=16) for s in ("tp", "ep", "pp")}
    assert all(b > 0 for b in bounds.values())


def test_bad_context_names_the_flag(capsys):
    assert main(["plan", "--context", "0"]) == 1
    assert "--context=0" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["h200", "h20"])
def test_k2_thinking_int4_fits_8_gpus_like_the_vllm_recipe(name):
    result = fit(K2, layer_bytes(K2, "int4"), gpu(name), 8, Workload(CTX_128K), split="tp")
    assert result.fits

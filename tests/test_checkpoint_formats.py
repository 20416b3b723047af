"""The official checkpoint formats load to the logits of their dequantized reference, and round-trip.

Each layout is written by the test helpers (tests/checkpoint_files.py, an independent plain implementation of
SPEC §3) together with its dequantized float32 reference; HF transformers' DeepseekV3ForCausalLM loads the
reference, `kimi_k2.load_model` loads the quantized files (dequantized on load, and kept quantized), and the
logits must agree to float32 tolerance. Quantizer round trips are checked against the format's error bound.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from safetensors import safe_open

import kimi_k2
from kimi_k2.checkpoint.writer import convert_checkpoint, save_model
from kimi_k2.cli import main as cli_main
from kimi_k2.config import ModelConfig
from kimi_k2.model.quant_linear import (
    FP8Linear,
    Int4Linear,
    fp8_dequantize,
    fp8_quantize,
    fp8_quantize_activation,
    int4_dequantize,
    int4_pack,
    int4_quantize,
    int4_unpack,
)
from kimi_k2.model.transformer import random_model
from tests.checkpoint_files import (
    DEEPSEEK_V3_TINY,
    K2_FP8_QUANT,
    K2_THINKING_QUANT,
    K2_TINY,
    TOKENIZER_FILES,
    fp8_dequantize_plain,
    fp8_quantize_plain,
    fp8_tensors,
    hf_reference_model,
    int4_pack_plain,
    int4_tensors,
    mtp_tensors,
    random_state,
    reference_dir,
    with_inv_freq,
    write_checkpoint,
)

IDS = torch.randint(2, K2_TINY["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(0))


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    bound = 1e-4 * max(1.0, theirs.abs().max().item())
    assert (ours - theirs).abs().max().item() <= bound


@pytest.fixture(scope="module")
def k2_fp8(tmp_path_factory):
    """Kimi-K2-Instruct layout: FP8 with partial blocks, `model-1-of-3.safetensors`, stray inv_freq, tokenizer."""
    root = tmp_path_factory.mktemp("k2_fp8")
    stored, reference = fp8_tensors(random_state(K2_TINY, seed=1))
    write_checkpoint(root / "ckpt", with_inv_freq(stored, K2_TINY), K2_TINY, quantization_config=K2_FP8_QUANT, tokenizer=True)
    hf = hf_reference_model(reference_dir(root / "ref", reference, K2_TINY))
    with torch.no_grad():
        logits = hf(IDS).logits
    return root / "ckpt", logits


@pytest.fixture(scope="module")
def thinking_int4(tmp_path_factory):
    """Kimi-K2-Thinking layout: routed experts INT4, the rest bf16, `model-00001-of-000003.safetensors`."""
    root = tmp_path_factory.mktemp("thinking_int4")
    stored, reference = int4_tensors(random_state(K2_TINY, seed=2))
    write_checkpoint(root / "ckpt", stored, K2_TINY, style="0905", quantization_config=K2_THINKING_QUANT)
    hf = hf_reference_model(reference_dir(root / "ref", reference, K2_TINY))
    with torch.no_grad():
        logits = hf(IDS).logits
    return root / "ckpt", logits


@pytest.mark.parametrize("weights", ["dequantize", "fp8"])
def test_k2_fp8_checkpoint_matches_dequantized_hf_reference(k2_fp8, weights, caplog):
    path, reference = k2_fp8
    with caplog.at_level(logging.INFO, logger="kimi_k2"):
        model = kimi_k2.load_model(path, weights=weights)
    assert "ignoring 3 tensors: rotary inv_freq" in caplog.text
    kind = FP8Linear if weights == "fp8" else torch.nn.Linear
    assert isinstance(model.model.layers[1].mlp.experts[0].down_proj, kind)
    assert isinstance(model.lm_head, torch.nn.Linear)  # lm_head is never quantized
    with torch.no_grad():
        assert_close(model(IDS), reference)


def test_fp8_kept_in_fp8_gives_the_logits_of_the_bf16_dequantized_model(k2_fp8):
    path, _ = k2_fp8
    dequantized = kimi_k2.load_model(path, dtype=torch.bfloat16)
    kept = kimi_k2.load_model(path, dtype=torch.bfloat16, weights="fp8", attention="absorbed")
    layer = kept.model.layers[1]
    assert layer.self_attn.kv_b_proj.weight.dtype == torch.float8_e4m3fn
    kept_bytes = sum(t.nbytes for t in kept.state_dict().values())
    assert kept_bytes < 0.75 * sum(t.nbytes for t in dequantized.state_dict().values())
    with torch.no_grad():
        dequantized.set_paths(attention="absorbed")
        assert torch.equal(kept(IDS), dequantized(IDS))  # same weights, bit for bit, on the absorbed path too


@pytest.mark.parametrize("weights", ["dequantize", "int4"])
def test_k2_thinking_int4_checkpoint_matches_dequantized_hf_reference(thinking_int4, weights):
    path, reference = thinking_int4
    model = kimi_k2.load_model(path, weights=weights)
    layer = model.model.layers[1]
    assert isinstance(layer.mlp.experts[3].down_proj, Int4Linear if weights == "int4" else torch.nn.Linear)
    # the ignore list keeps attention, the shared expert, the dense MLP and lm_head dense
    for module in (layer.self_attn.q_b_proj, layer.mlp.shared_experts.up_proj, model.model.layers[0].mlp.gate_proj):
        assert isinstance(module, torch.nn.Linear)
    with torch.no_grad():
        assert_close(model(IDS), reference)


def test_int4_kept_packed_equals_dequantized_on_load_in_bf16(thinking_int4):
    path, _ = thinking_int4
    packed = kimi_k2.load_model(path, dtype=torch.bfloat16, weights="int4")
    dense = kimi_k2.load_model(path, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(packed(IDS), dense(IDS))


def test_deepseek_v3_fp8_with_mtp_layer_loads_and_ignores_it(tmp_path, caplog):
    dense = random_state(DEEPSEEK_V3_TINY, seed=3)
    stored, reference = fp8_tensors({**dense, **mtp_tensors(dense, DEEPSEEK_V3_TINY, seed=3)})
    reference = {n: t for n, t in reference.items() if not n.startswith(f"model.layers.{DEEPSEEK_V3_TINY['num_hidden_layers']}.")}
    write_checkpoint(tmp_path / "ckpt", stored, DEEPSEEK_V3_TINY, shards=4, style="0905", quantization_config=K2_FP8_QUANT)
    hf = hf_reference_model(reference_dir(tmp_path / "ref", reference, DEEPSEEK_V3_TINY))
    with caplog.at_level(logging.INFO, logger="kimi_k2"):
        model = kimi_k2.load_model(tmp_path / "ckpt")
    assert "multi-token-prediction (MTP)" in caplog.text
    with torch.no_grad():
        assert_close(model(IDS), hf(IDS).logits)


def test_bf16_checkpoint_in_0905_shards_and_in_a_single_file_load_alike(tmp_path):
    state = {n: t.to(torch.bfloat16) if not n.endswith("correction_bias") else t for n, t in random_state(K2_TINY, 4).items()}
    write_checkpoint(tmp_path / "sharded", state, K2_TINY, shards=5, style="0905")
    write_checkpoint(tmp_path / "single", state, K2_TINY, shards=0)
    hf = hf_reference_model(reference_dir(tmp_path / "ref", state, K2_TINY))
    sharded, single = kimi_k2.load_model(tmp_path / "sharded"), kimi_k2.load_model(tmp_path / "single")
    with torch.no_grad():
        assert torch.equal(sharded(IDS), single(IDS))
        assert_close(sharded(IDS), hf(IDS).logits)


# ---------------------------------------------------------------------------------------------- round trips
def test_int4_pack_unpack_is_bit_exact_and_matches_the_official_nibble_layout():
    q = torch.randint(-8, 8, (7, 61), generator=torch.Generator().manual_seed(5)).to(torch.int8)  # 61: partial word
    q[0, :16] = torch.arange(-8, 8, dtype=torch.int8)
    packed = int4_pack(q)
    assert packed.dtype == torch.int32 and packed.shape == (7, 8)
    assert torch.equal(packed, int4_pack_plain(q.to(torch.int64)))
    assert torch.equal(int4_unpack(packed, 61), q)
    assert int(packed[0, 0]) == int.from_bytes(bytes([0x10, 0x32, 0x54, 0x76]), "little")  # nibbles 0..7 = -8..-1


def test_fp8_quantize_dequantize_error_within_e4m3_bound():
    w = torch.randn(300, 200, generator=torch.Generator().manual_seed(6)) * torch.logspace(-3, 0, 200)
    q, scale_inv = fp8_quantize(w)
    assert q.dtype == torch.float8_e4m3fn and scale_inv.shape == (3, 2)  # partial blocks at both edges
    expected_q, expected_scale = fp8_quantize_plain(w)
    assert torch.allclose(scale_inv, expected_scale, rtol=1e-6)
    deq = fp8_dequantize(q, scale_inv, torch.float32)
    assert torch.equal(deq, fp8_dequantize_plain(q, scale_inv))
    # e4m3: 3 mantissa bits → relative error ≤ 2^-4 for normals; subnormal spacing 2^-9 → absolute ≤ 2^-10 · scale
    per_element = scale_inv[torch.arange(300) // 128][:, torch.arange(200) // 128]
    bound = torch.maximum(w.abs() * 2**-4, per_element * 2**-10) * (1 + 1e-5)
    assert ((w - deq).abs() <= bound).all()
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(fp8_dequantize(q, scale_inv, dtype), deq.to(dtype))  # rounded once from float32


def test_int4_quantize_dequantize_error_within_half_a_step():
    w = torch.randn(50, 100, generator=torch.Generator().manual_seed(7))  # 100: partial word and partial group
    packed, scale, shape = int4_quantize(w)
    assert packed.shape == (50, 13) and scale.shape == (50, 4) and scale.dtype == torch.bfloat16
    assert shape.tolist() == [50, 100]
    deq = int4_dequantize(packed, scale, (50, 100), torch.float32)
    step = scale.float()[:, torch.arange(100) // 32]
    assert ((w - deq).abs() <= step / 2 * (1 + 1e-6)).all()


def test_dynamic_activation_scheme_equals_a_blockwise_fp8_gemm():
    g = torch.Generator().manual_seed(8)
    layer = FP8Linear.from_dense(torch.randn(96, 300, generator=g) * 0.05, dtype=torch.float32, activation_scheme="dynamic")
    x = torch.randn(5, 300, generator=g)
    w = layer.dequantize_weight(torch.float32)
    expected = torch.zeros(5, 96)
    for k in range(0, 300, 128):  # per 128-wide K block: quantize the activation block, accumulate in fp32
        block = x[:, k : k + 128]
        scale = block.abs().amax(dim=1, keepdim=True).clamp(min=1e-4) / 448
        expected += ((block / scale).to(torch.float8_e4m3fn).float() * scale) @ w[:, k : k + 128].T
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert torch.allclose(fp8_quantize_activation(x), x, rtol=2**-4, atol=1e-4 / 448 * 2**-6)


def test_quantized_storage_survives_a_dtype_cast():
    layer = FP8Linear.from_dense(torch.randn(40, 30), dtype=torch.float32)
    packed = Int4Linear.from_dense(torch.randn(40, 30), dtype=torch.float32)
    scale = layer.weight_scale_inv.clone()
    layer.to(torch.bfloat16)
    packed.half()
    assert layer.weight.dtype == torch.float8_e4m3fn and torch.equal(layer.weight_scale_inv, scale)
    assert layer.dtype == torch.bfloat16 and layer(torch.randn(2, 30, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert packed.weight_packed.dtype == torch.int32 and packed.weight_scale.dtype == torch.bfloat16
    assert packed.dtype == torch.float16


# ---------------------------------------------------------------------------------------------- writing
def test_save_model_writes_the_official_layout_that_transformers_and_we_load(tmp_path):
    cfg = ModelConfig.from_hf({**K2_TINY, "model_type": "deepseek_v3"})  # the model_type transformers knows
    model = random_model(cfg, seed=9)
    out = save_model(model, tmp_path / "bf16", cfg, fmt="bf16", max_shard_bytes=300_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    stored = {}
    for shard in shards:
        with safe_open(out / shard, "pt") as f:
            stored.update({name: f.get_tensor(name) for name in f.keys()})
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in stored.values())
    assert set(stored) == set(index["weight_map"]) == set(model.state_dict())
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["torch_dtype"] == "bfloat16"
    theirs = hf_reference_model(out)  # transformers reads our files directly
    ours = kimi_k2.load_model(out)
    with torch.no_grad():
        assert_close(ours(IDS), theirs(IDS).logits)


@pytest.mark.parametrize("fmt", ["fp8", "int4"])
def test_save_model_quantized_round_trip(tmp_path, fmt):
    cfg = ModelConfig.from_hf(K2_TINY)
    model = random_model(cfg, seed=10)
    out = save_model(model, tmp_path / fmt, cfg, fmt=fmt)
    config = json.loads((out / "config.json").read_text())
    if fmt == "fp8":
        assert config["quantization_config"] == K2_FP8_QUANT
    else:
        qc = config["quantization_config"]
        assert (qc["quant_method"], qc["format"], qc["ignore"]) == ("compressed-tensors", "pack-quantized", K2_THINKING_QUANT["ignore"])
        assert qc["config_groups"]["group_0"]["weights"]["group_size"] == 32
    kept = kimi_k2.load_model(out, weights=fmt)
    # saving a quantized model in its own format copies the stored tensors bit for bit
    again = save_model(kept, tmp_path / f"{fmt}-again", cfg, fmt=fmt)
    for name in (out / "model.safetensors", again / "model.safetensors"):
        assert name.is_file()
    assert (out / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()


def test_convert_streams_between_formats_and_copies_tokenizer_files(k2_fp8, tmp_path):
    src, _ = k2_fp8
    bf16 = convert_checkpoint(src, tmp_path / "bf16", "bf16", max_shard_bytes="200KB")
    assert all((bf16 / name).read_text() == text for name, text in TOKENIZER_FILES.items())
    assert len(list(bf16.glob("model-*-of-*.safetensors"))) > 1
    assert "quantization_config" not in json.loads((bf16 / "config.json").read_text())
    converted = kimi_k2.load_model(bf16, dtype=torch.bfloat16).state_dict()
    dequantized = kimi_k2.load_model(src, dtype=torch.bfloat16).state_dict()
    assert all(torch.equal(converted[n], dequantized[n]) for n in dequantized)

    fp8 = convert_checkpoint(src, tmp_path / "fp8", "fp8")  # same format: the stored bytes are copied
    with safe_open(fp8 / "model.safetensors", "pt") as f:
        for name in f.keys():
            shard = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"][name]
            with safe_open(src / shard, "pt") as g:
                assert torch.equal(f.get_tensor(name).view(torch.uint8), g.get_tensor(name).view(torch.uint8))

    assert cli_main(["convert", str(src), str(tmp_path / "int4"), "--to", "int4"]) == 0
    model = kimi_k2.load_model(tmp_path / "int4", weights="int4")
    assert isinstance(model.model.layers[2].mlp.experts[0].gate_proj, Int4Linear)
    assert isinstance(model.model.layers[2].self_attn.o_proj, torch.nn.Linear)
    with torch.no_grad():
        assert math.isfinite(model(IDS).abs().max().item())

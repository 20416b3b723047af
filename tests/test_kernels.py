"""The weight object and its kernels: the C++ products against the pure-torch arithmetic they implement, the
fallback path, the one-call expert kernel, and the engine running FP8 / INT4 checkpoints kept as stored.

Shapes are odd on purpose: FP8 128×128 blocks partial at both edges, INT4 inputs not a multiple of 8 or 32,
1-64 rows of x (the kernels take four rows at a time).
"""

from __future__ import annotations

import pytest
import torch

import kimi_k2.kernels.weight as weight_module
from kimi_k2.kernels.native import native
from kimi_k2.kernels.reference import blockwise_product, int8_activation_product, quantize_activations
from kimi_k2.kernels.weight import (
    LM_HEAD_TRANSPOSED_ROW_RANGE,
    TRANSPOSED_MIN_INPUTS,
    TRANSPOSED_ROW_RANGE,
    ConcatWeight,
    ExpertBank,
    Weight,
)
from kimi_k2.model.quant_linear import fp8_quantize, int4_quantize
from tests.threads import one_thread  # noqa: F401  (autouse: one torch thread in this module)

FORMATS = ("fp32", "bf16", "fp8", "int4")
SHAPES = [(300, 200), (129, 77), (257, 1000), (40, 33)]
ROWS = [1, 2, 3, 4, 5, 8, 13, 16, 17, 33, 64]




def make_weight(fmt: str, out_features: int, in_features: int, seed: int = 0) -> Weight:
    dense = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed)) * 0.1
    if fmt == "fp32":
        return Weight.from_dense(dense)
    if fmt == "bf16":
        return Weight.from_dense(dense.bfloat16())
    if fmt == "fp8":
        return Weight.fp8(*fp8_quantize(dense))
    packed, scale, _ = int4_quantize(dense)
    return Weight.int4(packed, scale, in_features)


def reference(w: Weight, x: torch.Tensor) -> torch.Tensor:
    fmt = w.fmt if w.fmt in ("fp8", "int4") else "dense"
    return blockwise_product(x, fmt, w.data, w.scale, w.in_features, w.block)


def magnitude(w: Weight, x: torch.Tensor) -> torch.Tensor:
    """|x| · |W|ᵀ: the size of the terms summed, the yardstick of float32 rounding."""
    return x.abs().double() @ w.dense(torch.float64 if w.fmt in ("fp32", "bf16") else torch.float32).abs().double().t()


def test_the_native_kernels_build_here():
    """The test machine has a compiler: the suite must exercise the C++ path, not only the fallback."""
    kernels = native()
    assert kernels is not None
    assert kernels.has_avx2() == ("avx2" in open("/proc/cpuinfo").read())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_equal_the_blockwise_reference_within_float32_rounding(fmt, shape):
    """Every row count through the C++ kernel directly, against the same arithmetic in torch."""
    w = make_weight(fmt, *shape)
    kernels = native()
    for rows in ROWS:
        x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(rows))
        out = torch.empty(rows, shape[0])
        kernels.linear(x, out, *w.native_args(), 1.0, False, False)
        err = ((out.double() - reference(w, x).double()).abs() / magnitude(w, x).clamp_min(1e-30)).max().item()
        assert err < 4e-6, (fmt, shape, rows, err)


@pytest.mark.parametrize("fmt", FORMATS)
def test_products_equal_dequantize_then_linear(fmt):
    """`Weight.mm` on every path it picks (kernel for few rows, tiles for many) against dequantize + F.linear."""
    w = make_weight(fmt, 600, 333)
    for rows in ROWS:
        x = torch.randn(rows, 333, generator=torch.Generator().manual_seed(rows))
        expected = torch.nn.functional.linear(x.double(), w.dense(torch.float32).double())
        got = w.mm(x)
        assert got.dtype == torch.float32 and got.shape == (rows, 600)
        assert ((got.double() - expected).abs() / magnitude(w, x)).max() < 1e-5, (fmt, rows)


@pytest.mark.parametrize("fmt", FORMATS)
def test_accumulate_with_alpha_into_a_column_slice(fmt):
    w = make_weight(fmt, 96, 130)
    for rows in (1, 3, 40):
        x = torch.randn(rows, 130)
        base = torch.randn(rows, 200)
        acc = base.clone()
        w.mm(x, out=acc[:, 50:146], alpha=0.5)
        expected = base.clone()
        expected[:, 50:146] += 0.5 * (x @ w.dense().t())
        assert torch.allclose(acc, expected, atol=1e-5), (fmt, rows)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fallback_without_the_kernels_gives_the_same_products(fmt, monkeypatch):
    w = make_weight(fmt, 200, 160)
    x = torch.randn(3, 160)
    with_kernels = w.mm(x)
    monkeypatch.setattr(weight_module, "native", lambda: None)
    without = w.mm(x)
    assert torch.allclose(with_kernels, without, rtol=1e-5, atol=1e-6)


def test_bf16_activations_round_once_from_the_float32_product():
    w = make_weight("fp8", 64, 256)
    x = torch.randn(2, 256).bfloat16()
    assert torch.equal(w.mm(x), w.mm(x.float()).bfloat16())


@pytest.mark.parametrize(
    "rows", [1, 2, 3, TRANSPOSED_ROW_RANGE[0], 16, TRANSPOSED_ROW_RANGE[1], TRANSPOSED_ROW_RANGE[1] + 1]
)
@pytest.mark.parametrize("lm_head", [False, True])
def test_dense_product_forms_agree_with_plain_linear(rows, lm_head):
    """Dense products (the kernel, x @ Wᵀ, or (W @ xᵀ)ᵀ where MKL reads W faster that way) equal F.linear up
    to float rounding, whichever form the row count picks; `out=` accumulates."""
    gen = torch.Generator().manual_seed(rows)
    dense = torch.randn(48, TRANSPOSED_MIN_INPUTS, generator=gen)
    w = Weight.from_dense(dense, lm_head=lm_head)
    x, acc = torch.randn(rows, TRANSPOSED_MIN_INPUTS, generator=gen), torch.randn(rows, 48, generator=gen)
    expected = torch.nn.functional.linear(x, dense)
    got = w.mm(x)
    assert got.is_contiguous() and torch.allclose(got, expected, atol=1e-4)
    summed = w.mm(x, out=acc.clone())
    assert torch.allclose(summed, acc + expected, atol=1e-4)
    assert torch.allclose(w.mm(x, out=acc.clone(), alpha=0.5), acc + 0.5 * expected, atol=1e-4)
    assert LM_HEAD_TRANSPOSED_ROW_RANGE[0] <= TRANSPOSED_ROW_RANGE[1]


def test_concat_weight_puts_outputs_side_by_side():
    parts = [make_weight("fp8", 130, 100, seed=1), make_weight("fp8", 70, 100, seed=2)]
    both = ConcatWeight(parts)
    x = torch.randn(2, 100)
    assert torch.allclose(both.mm(x), torch.cat([p.mm(x) for p in parts], dim=1))
    assert torch.equal(both.dense(), torch.cat([p.dense() for p in parts]))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tokens", [1, 2, 3, 9, 20])
def test_one_call_expert_kernel_equals_the_expert_loop(fmt, tokens):
    n_experts, hidden, inter, top_k = 6, 160, 72, 3
    bank = ExpertBank(
        gate=[make_weight(fmt, inter, hidden, seed=10 + e) for e in range(n_experts)],
        up=[make_weight(fmt, inter, hidden, seed=20 + e) for e in range(n_experts)],
        down=[make_weight(fmt, hidden, inter, seed=30 + e) for e in range(n_experts)],
    )
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, hidden, generator=gen)
    experts = torch.stack([torch.randperm(n_experts, generator=gen)[:top_k] for _ in range(tokens)])
    weights = torch.rand(tokens, top_k, generator=gen)
    out = torch.zeros(tokens, hidden)
    assert bank.run_native(x, experts, weights, out)
    expected = torch.zeros(tokens, hidden, dtype=torch.float64)
    for t in range(tokens):
        for e, a in zip(experts[t].tolist(), weights[t].tolist()):
            g = x[t : t + 1].double() @ bank.gate[e].dense().double().t()
            u = x[t : t + 1].double() @ bank.up[e].dense().double().t()
            expected[t] += a * (torch.nn.functional.silu(g) * u @ bank.down[e].dense().double().t())[0]
    assert torch.allclose(out.double(), expected, rtol=1e-4, atol=1e-5)


def test_expert_bank_refuses_mixed_formats():
    with pytest.raises(ValueError, match="one format"):
        ExpertBank(gate=[make_weight("fp8", 8, 8)], up=[make_weight("int4", 8, 8)], down=[make_weight("fp8", 8, 8)])


def test_kernel_checks_name_the_bad_argument():
    w = make_weight("fp32", 8, 16)
    with pytest.raises(RuntimeError, match="x must be"):
        native().linear(torch.randn(2, 15), torch.empty(2, 8), *w.native_args(), 1.0, False, False)
    with pytest.raises(RuntimeError, match="out must be"):
        native().linear(torch.randn(2, 16), torch.empty(2, 8, dtype=torch.float64), *w.native_args(), 1.0, False, False)


def test_the_simd_and_scalar_builds_of_the_kernels_agree(tmp_path):
    """CPUs without AVX2 get the scalar build of the same sums: compiled here beside the AVX2 one (no torch, a
    few seconds) and compared on every format, odd shapes, 1-5 rows."""
    import shutil
    import subprocess
    from pathlib import Path

    compiler = shutil.which("g++") or shutil.which("c++")
    assert compiler is not None, "the native kernels need a C++ compiler"
    source = Path(__file__).with_name("kernels_scalar_check.cpp")
    binary = tmp_path / "check"
    subprocess.run([compiler, "-O2", "-march=native", "-std=c++17", str(source), "-o", str(binary)], check=True, timeout=120)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_int8_activation_quantizer_matches_its_reference():
    x = torch.randn(3, 200) * torch.logspace(-3, 2, 200)
    q, d = native().quantize_activations(x)
    ref_q, ref_d = quantize_activations(x)
    assert torch.equal(d, ref_d)
    order = torch.cat([torch.arange(0, 32, 2), torch.arange(1, 32, 2)])  # the kernel's even-then-odd order
    assert torch.equal(q.view(3, -1, 32).float(), ref_q[:, :, order])


@pytest.mark.parametrize("shape", [(300, 200), (129, 77), (40, 33), (64, 1024)])
def test_int8_activation_kernel_equals_its_reference_and_stays_within_its_tolerance(shape):
    """The int8-activation mode: exact integer group sums, so it equals the same arithmetic in torch to float32
    rounding; against float activations its error is that of 8-bit activations (bounded here at 1% of the sum
    of |terms|, measured ~0.2%: docs/engine.md)."""
    w = make_weight("int4", *shape)
    w.int8_activations = True
    worst = 0.0
    for rows in (1, 2, 3, 4, 5, 9):
        x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(rows))
        got = w.mm(x)
        ref = int8_activation_product(x, w.data, w.scale, shape[1])
        scale = magnitude(w, x)
        assert ((got.double() - ref.double()).abs() / scale).max() < 4e-6, rows
        exact = x.double() @ w.dense().double().t()
        worst = max(worst, ((got.double() - exact).abs() / scale).max().item())
    assert worst < 0.01


def test_int8_activation_expert_kernel_stays_close_to_float_activations():
    n_experts, hidden, inter, top_k, tokens = 6, 160, 96, 3, 5
    bank = ExpertBank(
        gate=[make_weight("int4", inter, hidden, seed=10 + e) for e in range(n_experts)],
        up=[make_weight("int4", inter, hidden, seed=20 + e) for e in range(n_experts)],
        down=[make_weight("int4", hidden, inter, seed=30 + e) for e in range(n_experts)],
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, hidden, generator=gen)
    experts = torch.stack([torch.randperm(n_experts, generator=gen)[:top_k] for _ in range(tokens)])
    weights = torch.rand(tokens, top_k, generator=gen)
    exact, approx = torch.zeros(tokens, hidden), torch.zeros(tokens, hidden)
    bank.run_native(x, experts, weights, exact)
    bank.set_int8_activations(True)
    assert bank.gate[0].int8_activations
    bank.run_native(x, experts, weights, approx)
    assert not torch.equal(exact, approx)  # the mode is really on
    assert ((approx - exact).norm() / exact.norm()) < 0.02


@pytest.mark.parametrize("fmt", ["bf16", "fp8", "int4"])
def test_native_dequantized_tiles_equal_the_reference_bit_for_bit(fmt, monkeypatch):
    """Prefill's tiles come from the kernels' decoders: the very values quant_linear's dequantizers give."""
    w = make_weight(fmt, 300, 333)
    native_tiles = [w.rows(start, min(300, start + 128), torch.float32) for start in (0, 128, 256)]
    monkeypatch.setattr(weight_module, "native", lambda: None)
    reference_tiles = [w.rows(start, min(300, start + 128), torch.float32) for start in (0, 128, 256)]
    for a, b in zip(native_tiles, reference_tiles):
        assert torch.equal(a, b)


def test_native_rms_norm_equals_the_formula():
    from kimi_k2.kernels.weight import rms_norm_rows
    from kimi_k2.model.norm import RMSNorm, rms_norm_reference

    norm = RMSNorm(1000, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(1000))
    wide = torch.randn(5, 1100) * 3
    x = wide[:, 50:1050]  # a column slice: rows with a stride, as the runner passes them
    got = rms_norm_rows(norm, x)
    assert torch.allclose(got, rms_norm_reference(x, norm.weight, 1e-6), rtol=1e-5, atol=1e-6)

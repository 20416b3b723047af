"""The product kernels alone: GB/s of weight bytes read per format for one K2 expert projection (2048 × 7168),
cold (the weights cycle through more copies than the caches hold), against torch's own kernels in the same run.

Rows of x: 1 (batch-1 decode) and 4. Peers, where this torch has them: `torch.mm` on the fp32 weight (MKL / the
CPU BLAS), `torch._weight_int8pack_mm` (int8 weight per-row scales, bf16 activations) and
`torch._weight_int4pack_mm_for_cpu` (int4 group 32, bf16 activations; the official INT4 layout feeds it after a
nibble unpack). A 1 GiB fp32 `sum` is the read probe. Best of `--repeats`.

Usage:  python bench/kernel_speed.py [--threads 2] [--repeats 5] [--megabytes 400]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import machine  # noqa: E402
from formats import read_probe  # noqa: E402

from kimi_k2.kernels.native import native  # noqa: E402
from kimi_k2.kernels.weight import Weight  # noqa: E402
from kimi_k2.model.quant_linear import fp8_quantize, int4_quantize, int4_unpack  # noqa: E402

OUT, IN = 2048, 7168


def rate(nbytes: int, copies: list, call: Callable[[object], object], repeats: int) -> float:
    """Best GB/s over `repeats` passes through all copies (each pass reads every copy once)."""
    for c in copies[:2]:
        call(c)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for c in copies:
            call(c)
        best = min(best, (time.perf_counter() - start) / len(copies))
    return nbytes / best / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--megabytes", type=int, default=400, help="bytes of weight copies cycled through per format")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if native() is None:
        print("the native kernels are not built here: measuring the pure-torch fallback", file=sys.stderr)
    dense = torch.randn(OUT, IN) * 0.02
    f8, s8 = fp8_quantize(dense)
    packed, s4, _ = int4_quantize(dense)
    weights = {
        "fp32": Weight.from_dense(dense),
        "bf16": Weight.from_dense(dense.bfloat16()),
        "fp8 (block 128)": Weight.fp8(f8, s8),
        "int4 (group 32)": Weight.int4(packed, s4, IN),
    }
    header = machine()
    print(header, file=sys.stderr, flush=True)
    probe = read_probe()
    rows: list[tuple[str, int, float]] = []
    for name, w in weights.items():
        n = max(2, args.megabytes * 10**6 // w.nbytes)
        copies = [Weight(w.fmt, w.data.clone(), None if w.scale is None else w.scale.clone(), OUT, IN, w.block) for _ in range(n)]
        for m in (1, 4):
            x = torch.randn(m, IN)
            rows.append((f"ours {name}", m, rate(w.nbytes, copies, lambda c: c.mm(x), args.repeats)))
        del copies
    fp32 = [dense.clone() for _ in range(max(2, args.megabytes * 10**6 // dense.nbytes))]
    for m in (1, 4):
        x = torch.randn(m, IN)
        rows.append(("torch.mm fp32", m, rate(dense.nbytes, fp32, lambda w: torch.mm(x, w.t()), args.repeats)))
    del fp32
    if hasattr(torch, "_weight_int8pack_mm"):
        q8 = (dense / (dense.abs().amax(1, keepdim=True) / 127)).round().to(torch.int8)
        scales = (dense.abs().amax(1) / 127).bfloat16()
        copies8 = [q8.clone() for _ in range(max(2, args.megabytes * 10**6 // q8.nbytes))]
        for m in (1, 4):
            x = torch.randn(m, IN).bfloat16()
            rows.append(("torch._weight_int8pack_mm (bf16 x)", m,
                         rate(q8.nbytes + scales.nbytes, copies8, lambda w: torch._weight_int8pack_mm(x, w, scales), args.repeats)))
        del copies8
    if hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        unsigned = (int4_unpack(packed, IN).to(torch.int32) + 8).contiguous()  # the op wants u in [0, 15], zero 0
        tiles = torch._convert_weight_to_int4pack_for_cpu(unsigned, 1)
        qz = torch.stack([s4.float(), torch.zeros_like(s4.float())], dim=-1).transpose(0, 1).contiguous().bfloat16()
        copies4 = [tiles.clone() for _ in range(max(2, args.megabytes * 10**6 // tiles.nbytes))]
        for m in (1, 4):
            x = torch.randn(m, IN).bfloat16()
            try:
                rows.append(("torch._weight_int4pack_mm_for_cpu (bf16 x)", m, rate(
                    tiles.nbytes + qz.nbytes, copies4, lambda w: torch._weight_int4pack_mm_for_cpu(x, w, 32, qz), args.repeats)))
            except RuntimeError as exc:  # the op's signature moves between torch versions
                print(f"torch int4 op not measured: {exc}", file=sys.stderr)
                break
    lines = [
        f"Machine: {header}.",
        f"One {OUT}×{IN} projection (a K2 expert's gate_proj), cold, {args.threads} threads, best of {args.repeats}; "
        f"read probe (1 GiB fp32 sum) {probe / 1e9:.1f} GB/s.",
        "",
        "| kernel | rows | GB/s of weight bytes | of the probe |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {m} | {gbs:.1f} | {gbs * 1e9 / probe:.0%} |" for name, m, gbs in rows]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

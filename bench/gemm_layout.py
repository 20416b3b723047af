"""Which weight layout and product form the fast runner should use: `F.linear(x, W[out, in])` against
`x @ W[in, out]`, and, on the same output-major weight, the transposed product `(W @ xᵀ)ᵀ`.

For the shapes of the `medium` preset's decode products (expert gate+up and down, attention projections,
lm_head) and 1 to 64 rows (batch-1 decode and batched decode), it multiplies rows by cold weights —
a rotation of distinct matrices larger than the last-level cache, as in a real step where every weight is
read once — and prints the weight bytes read per second for each form. (MKL picks its kernel and its split
over threads by shape: for 12-32 rows and weights with 1,024+ inputs, and for the 32,768-row lm_head at 4-32
rows, `W @ xᵀ` mostly reads faster than `F.linear`.)

Usage:  python bench/gemm_layout.py [--threads N] [--cache-mb 160]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.decode import machine  # noqa: E402

# (name, in K, out N) for the medium preset (hidden 1024, expert width 256, q_lora 384, 8 heads).
SHAPES = [
    ("expert gate+up", 1024, 512),
    ("expert down", 256, 1024),
    ("q_a + kv_a", 1024, 544),
    ("dense gate+up", 1024, 5632),
    ("dense down", 2816, 1024),
    ("q_b", 384, 768),
    ("o_proj", 512, 1024),
    ("lm_head", 1024, 32768),
]
ROWS = (1, 2, 4, 8, 12, 16, 32, 64)


FORMS = {  # name → (weight stored output-major?, product)
    "linear": (True, lambda x, w: F.linear(x, w)),
    "x@W": (False, lambda x, w: x @ w),
    "W@xT": (True, lambda x, w: torch.mm(w, x.t()).t().contiguous()),  # as the runner does (model_runner._matmul)
}


def weight_gb_per_s(k: int, n: int, rows: int, form: str, cache_bytes: int, repeats: int = 2) -> float:
    out_major, product = FORMS[form]
    count = max(2, cache_bytes // (k * n * 4) + 1)
    weights = [torch.randn(n, k) if out_major else torch.randn(k, n) for _ in range(count)]
    x = torch.randn(rows, k)

    def one_pass() -> None:
        for w in weights:
            product(x, w)

    one_pass()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        one_pass()
        best = min(best, time.perf_counter() - start)
    return count * k * n * 4 / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--cache-mb", type=int, default=160, help="MiB of distinct weights per pass (more than the last-level cache)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"Machine: {machine()}\n")
    print("| product | K → N | rows | out-major `F.linear` GB/s | in-major `x @ W` GB/s | out / in | out-major `W @ xᵀ` GB/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, k, n in SHAPES:
        for rows in ROWS:
            linear, in_major, transposed = (weight_gb_per_s(k, n, rows, form, args.cache_mb << 20) for form in FORMS)
            print(f"| {name} | {k} → {n} | {rows} | {linear:.1f} | {in_major:.1f} | {linear / in_major:.2f}× | {transposed:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

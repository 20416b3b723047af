"""Which weight layout the fast runner should keep: `F.linear(x, W[out, in])` against `x @ W[in, out]`.

For the shapes of the `medium` preset's decode products (expert gate+up and down, attention projections,
lm_head) and 1, 2, 4 and 16 rows (batch-1 decode and batched decode), it multiplies rows by cold weights —
a rotation of distinct matrices larger than the last-level cache, as in a real step where every weight is
read once — and prints the weight bytes read per second for each layout.

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
    ("q_b", 384, 768),
    ("o_proj", 512, 1024),
    ("lm_head", 1024, 32768),
]
ROWS = (1, 2, 4, 16)


def weight_gb_per_s(k: int, n: int, rows: int, out_major: bool, cache_bytes: int, repeats: int = 2) -> float:
    count = max(2, cache_bytes // (k * n * 4) + 1)
    weights = [torch.randn(n, k) if out_major else torch.randn(k, n) for _ in range(count)]
    x = torch.randn(rows, k)

    def one_pass() -> None:
        for w in weights:
            F.linear(x, w) if out_major else x @ w

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
    print("| product | K → N | rows | out-major `F.linear` GB/s | in-major `x @ W` GB/s | out / in |")
    print("|---|---|---:|---:|---:|---:|")
    for name, k, n in SHAPES:
        for rows in ROWS:
            out_major = weight_gb_per_s(k, n, rows, True, args.cache_mb << 20)
            in_major = weight_gb_per_s(k, n, rows, False, args.cache_mb << 20)
            print(f"| {name} | {k} → {n} | {rows} | {out_major:.1f} | {in_major:.1f} | {out_major / in_major:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

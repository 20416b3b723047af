"""`kimi-k2 convert` and `kimi-k2 verify`: checkpoint conversion and validation from the command line.

`verify DIR` checks the config, index and every shard header (no weight bytes read) and prints a summary;
problems go to stderr, one per line, and the exit code is 1. `convert SRC DST --to {bf16,fp32,fp8,int4}`
validates SRC the same way first, then streams the conversion shard by shard with a progress bar.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kimi_k2.checkpoint.scheme import CheckpointError
from kimi_k2.checkpoint.validate import inspect_checkpoint
from kimi_k2.checkpoint.writer import DEFAULT_MAX_SHARD_BYTES, FORMATS, convert_checkpoint
from kimi_k2.hub import cached_snapshot, looks_like_hub_id


def register(subparsers: argparse._SubParsersAction) -> None:
    verify = subparsers.add_parser(
        "verify", help="validate a checkpoint directory against its config.json without reading weights"
    )
    verify.add_argument("directory", help="checkpoint directory (config.json + safetensors index or model.safetensors), or a Hub id in the local HF cache")
    verify.set_defaults(func=run_verify)

    convert = subparsers.add_parser("convert", help="convert a checkpoint to bf16, fp32, block FP8 or INT4 (HF layout)")
    convert.add_argument("src", help="source checkpoint directory, or a Hub id in the local HF cache")
    convert.add_argument("dst", help="destination directory")
    convert.add_argument("--to", required=True, choices=FORMATS, help="output format")
    convert.add_argument(
        "--max-shard-size", default=str(DEFAULT_MAX_SHARD_BYTES), help="largest shard, e.g. 5GB or 512MiB (default 5GB)"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in DST")
    convert.set_defaults(func=run_convert)


def _gib(nbytes: int) -> str:
    return f"{nbytes:,} bytes ({nbytes / 2**30:.2f} GiB)"


def _checkpoint(path: str) -> str:
    """`path`, or the local HF cache's snapshot when it is a Hub id (`kimi_k2.hub`; nothing downloads)."""
    return str(cached_snapshot(path)) if looks_like_hub_id(path) else path


def run_verify(args: argparse.Namespace) -> int:
    report = inspect_checkpoint(_checkpoint(args.directory))
    print(f"checkpoint  {report.root}")
    if report.cfg is not None:
        cfg = report.cfg
        print(
            f"model       {cfg.model_type}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
            f"{cfg.n_routed_experts} routed experts, vocab {cfg.vocab_size}"
        )
    if report.scheme is not None:
        print(f"format      {report.scheme.describe()}")
    stored = report.stored_tensors()
    print(f"shards      {len(report.shards)} ({len(report.headers)} readable)")
    print(f"tensors     {len(report.weight_map):,} in the index, {len(report.expected):,} expected by the config")
    print(f"bytes       {_gib(sum(t.nbytes for t in stored))}")
    print("dtypes      " + ", ".join(f"{tag} {count:,}" for tag, count in report.dtype_counts.items()))
    for reason, count in report.ignored.items():
        print(f"ignored     {count:,} tensors: {reason}")
    if report.problems:
        print(f"problems    {len(report.problems)} (listed on stderr)")
        print(f"{report.root}: {len(report.problems)} problems:", file=sys.stderr)
        for problem in report.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print("problems    none")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = convert_checkpoint(_checkpoint(args.src), args.dst, args.to, max_shard_bytes=args.max_shard_size, overwrite=args.overwrite)
    except CheckpointError as exc:
        print(f"kimi-k2 convert: {exc.source}: {len(exc.problems)} problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({args.to})")
    return 0

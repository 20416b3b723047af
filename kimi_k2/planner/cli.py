"""`kimi-k2 plan`: will a K2-family model fit, on how many GPUs, and how fast can it possibly run.

The only planner module that prints. `--json` emits `Plan.as_dict()` (stable keys); the default is a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from kimi_k2.config import resolve_config
from kimi_k2.planner.cpu import DEFAULT_RAM_UTIL, cpu_plan
from kimi_k2.planner.fit import DEFAULT_MEM_UTIL, DEFAULT_PREFILL_CHUNK, SPLITS
from kimi_k2.planner.formats import FORMATS
from kimi_k2.planner.hardware import GPUS, custom_gpu, gpu
from kimi_k2.planner.kv import KV_DTYPE_BYTES, kv_bytes
from kimi_k2.planner.plan import DEFAULT_FORMAT, Plan, make_plan
from kimi_k2.planner.speed import DEFAULT_RAM_BANDWIDTH


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="memory, GPU count and speed bounds for a K2-family model",
        description="Plan memory, GPUs and speed bounds for a K2-family model. Speeds are upper bounds.",
    )
    p.add_argument("--model", default="kimi-k2", help="preset name or checkpoint directory (default: kimi-k2)")
    p.add_argument("--weights", default=DEFAULT_FORMAT, metavar="FORMAT", help=f"{', '.join(FORMATS)} (default: {DEFAULT_FORMAT})")
    p.add_argument("--context", type=int, default=None, help="tokens per sequence (default: max_position_embeddings)")
    p.add_argument("--batch", type=int, default=1, help="concurrent sequences (default: 1)")
    p.add_argument("--gpu", default="h200", help=f"{', '.join(GPUS)} (default: h200)")
    p.add_argument("--gpus", type=int, default=8, help="GPU count to check (default: 8)")
    p.add_argument("--split", choices=SPLITS, default="tp", help="tensor parallel, expert parallel or layer split (default: tp)")
    p.add_argument("--kv-dtype", choices=tuple(KV_DTYPE_BYTES), default="bf16", help="KV cache dtype (default: bf16)")
    p.add_argument("--mem-util", type=float, default=DEFAULT_MEM_UTIL, help=f"usable fraction of GPU memory (default: {DEFAULT_MEM_UTIL})")
    p.add_argument("--gpu-mem", type=float, default=None, metavar="GIB", help="override the GPU's memory (GiB)")
    p.add_argument("--bandwidth", type=float, default=None, metavar="TB/S", help="override the GPU's memory bandwidth (TB/s)")
    p.add_argument("--ram-bandwidth", type=float, default=DEFAULT_RAM_BANDWIDTH / 1e12, metavar="TB/S",
                   help=f"CPU RAM bandwidth for the offload plan (default: {DEFAULT_RAM_BANDWIDTH / 1e12})")  # fmt: skip
    p.add_argument("--ram", type=float, default=None, metavar="GIB",
                   help="plan one CPU machine with this much RAM instead: the engine's memory with the weights as "
                   "stored (memory-mapped or read in) and the RAM-bandwidth decode bound (uses --ram-bandwidth)")
    p.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK, help="tokens per prefill step, sizes the activation overhead")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.ram is not None:
        return run_cpu(args)
    device = gpu(args.gpu)
    if args.gpu_mem is not None or args.bandwidth is not None:
        device = custom_gpu(device, args.gpu_mem, args.bandwidth)
    plan = make_plan(
        resolve_config(args.model),
        device,
        model=str(args.model),
        weights=args.weights,
        context=args.context,
        batch=args.batch,
        gpus=args.gpus,
        split=args.split,
        kv_dtype=args.kv_dtype,
        mem_util=args.mem_util,
        ram_bandwidth=args.ram_bandwidth * 1e12,
        chunk_tokens=args.prefill_chunk,
    )
    print(json.dumps(plan.as_dict(), indent=2) if args.json else render(plan))
    return 0


def run_cpu(args: argparse.Namespace) -> int:
    """`plan --ram GIB`: one machine, the engine's own memory and the bandwidth-bound decode rate."""
    cfg = resolve_config(args.model)
    context = args.context or cfg.max_position_embeddings
    kv = kv_bytes(cfg, context, args.batch, KV_DTYPE_BYTES["fp32"])  # the CPU engine's KV pool is float32
    plan = cpu_plan(cfg, args.weights, kv_bytes=kv, ram_bytes=int(args.ram * 2**30),
                    ram_bandwidth=args.ram_bandwidth * 1e12)
    if args.json:
        print(json.dumps({**dataclasses.asdict(plan), "resident_bytes": plan.resident_bytes,
                          "mapped_hot_bytes": plan.mapped_hot_bytes, "fits_in_ram": plan.fits_in_ram,
                          "runs_mapped": plan.runs_mapped,
                          "decode_tokens_per_s_bound": plan.decode_tokens_per_s_bound}, indent=2))
        return 0
    util = f"{DEFAULT_RAM_UTIL:.0%} of {args.ram:,.0f} GiB"
    rows = [
        ("model", f"{args.model}  ({plan.fmt} weights as stored, float32 activations, {context:,} tokens × {args.batch})"),
        ("weights, read into RAM", _gb(plan.resident_bytes)),
        ("  Linear weights as stored", _gb(plan.linear_bytes)),
        ("    of which routed experts", _gb(plan.routed_bytes)),
        ("  converted to float32", f"{_gb(plan.converted_bytes)} (norms, routers, kv_b splits)"),
        ("KV cache (float32)", _gb(plan.kv_bytes)),
        ("fits in RAM", f"{'yes' if plan.fits_in_ram else 'no'} ({util})"),
        ("memory-mapped", f"{'runs' if plan.runs_mapped else 'does NOT run'}: hot set {_gb(plan.mapped_hot_bytes)} + KV; "
         "the page cache holds the experts it can, the rest come from disk"),
        ("weights per decode token", _gb(plan.token_bytes)),
        ("decode bound", f"≤ {_rate(plan.decode_tokens_per_s_bound)} at {args.ram_bandwidth:.3f} TB/s RAM (batch 1)"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return 0


def _gb(n: float) -> str:
    """Decimal and binary units, scaled to the size (GB for K2, KB for the tiny model)."""
    for power, unit in ((3, "G"), (2, "M"), (1, "K")):
        if abs(n) >= 1000**power:
            return f"{n / 1000**power:,.1f} {unit}B ({n / 1024**power:,.1f} {unit}iB)"
    return f"{n:,.0f} B"


def _params(n: int) -> str:
    return f"{n:,} ({n / 1e9:,.1f}B)" if n >= 10**9 else f"{n:,}"


def _rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f} tok/s"


def render(plan: Plan) -> str:
    """The human-readable table."""
    rows: list[tuple[str, str]] = [
        ("model", f"{plan.model}  ({plan.weights} weights, {plan.context:,} tokens × {plan.batch} sequence{'s' if plan.batch > 1 else ''}, KV {plan.kv_dtype})"),
        ("parameters", f"{_params(plan.params.total)} total, {_params(plan.params.active)} active per token"),
        ("weights", _gb(plan.weight_bytes)),
    ]
    rows += [(f"  {name}", _gb(size)) for name, size in plan.weight_bytes_by_component.items() if size]
    rows += [(f"  published: {p.name}", _gb(p.bytes)) for p in plan.published_sizes]
    ratio = plan.kv_bytes_per_token_per_head / plan.kv_bytes_per_token
    rows += [
        ("KV per token", f"{plan.kv_bytes_per_token:,} B (MLA latent; per-head K/V would be {plan.kv_bytes_per_token_per_head:,} B, {ratio:.1f}×)"),
        ("KV cache", _gb(plan.kv_bytes)),
        ("GPU", f"{plan.fit.gpus} × {plan.device.name}, {plan.split} split, mem-util {plan.mem_util}"),
    ]
    load = plan.fit.load
    if load is None:
        rows.append(("fit", f"impossible: {plan.fit.error}"))
    else:
        verdict = "FITS" if plan.fit.fits else ("weights load, no usable headroom" if plan.weights_fit else "does NOT fit")
        rows += [
            ("per GPU usable", _gb(plan.fit.usable_bytes_per_gpu)),
            ("  weights", _gb(load.weights)),
            ("  KV cache", _gb(load.kv)),
            ("  overhead", _gb(load.overhead)),
            ("  headroom", _gb(plan.fit.headroom_bytes_per_gpu or 0)),
            ("fit", verdict),
        ]
    rows.append(("minimum GPUs", "none up to the split's limit" if plan.min_gpus is None else f"{plan.min_gpus} × {plan.device.name} ({plan.split})"))
    if plan.launch is not None:
        rows.append(("launch", plan.launch))
    elif plan.split != "tp":
        rows.append(("launch", "this engine shards by tensor parallelism (--split tp, with expert parallelism)"))
    off = plan.offload
    rows.append(
        (
            "offload plan",
            f"experts in RAM {_gb(off.ram_bytes)}; one GPU needs {_gb(off.vram_bytes)} "
            f"({'fits' if off.fits_one_gpu else 'does not fit'}); decode ≤ {_rate(plan.offload_decode_tokens_per_s_bound)} "
            f"at {plan.ram_bandwidth / 1e12:.2f} TB/s RAM",
        )
    )
    caveat = "" if plan.fit.fits else ", if it fit"
    rows += [
        ("decode bound", f"≤ {_rate(plan.decode_tokens_per_s_bound)} (bandwidth; upper bound{caveat})"),
        ("prefill bound", f"≤ {_rate(plan.prefill_tokens_per_s_bound)} (FLOPs; upper bound{caveat})"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

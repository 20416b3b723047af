"""Collectives and step time of the sharded engine (gloo on this host's CPU), next to the planner's formula.

For each layout (1 rank; tensor parallel over 2 and 4; with expert parallelism, all-reduce and all-to-all
combine) the same random checkpoint (FP8, the official layout) is served by `LLM(path, tensor_parallel_size=N,
...)`: B prompts are prefilled, then decode steps of B tokens are timed. Rank 0 counts every collective it takes
part in (`kimi_k2.parallel.collectives`: calls and bytes it sends) over the decode steps; the table gives them per
step and per decoded token beside `planner.ranks.step_collectives`, and the step time.

The step times measure correctness plumbing, not speed: N ranks on a 2-core machine share the same two cores
(and their memory bandwidth), so more ranks are slower here; on N GPUs each rank has its own device.

Usage:  python bench/parallel.py [--preset tiny|medium] [--batch 4] [--steps 8] [--ranks 1,2,4] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import machine  # noqa: E402

from kimi_k2.checkpoint.writer import save_model  # noqa: E402
from kimi_k2.config import preset  # noqa: E402
from kimi_k2.engine.llm import LLM  # noqa: E402
from kimi_k2.engine.sampling_params import SamplingParams  # noqa: E402
from kimi_k2.model.transformer import random_model  # noqa: E402
from kimi_k2.planner.ranks import step_collectives  # noqa: E402


def layouts(ranks: list[int]) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for n in ranks:
        if n == 1:
            out.append(("1 process", {}))
            continue
        out.append((f"TP={n}", dict(tensor_parallel_size=n)))
        out.append((f"TP={n} + EP (all-reduce)", dict(tensor_parallel_size=n, enable_expert_parallel=True)))
        out.append((f"TP={n} + EP (all-to-all)", dict(tensor_parallel_size=n, enable_expert_parallel=True,
                                                      moe_combine="alltoall")))
    return out


def measure(path: Path, kwargs: dict, batch: int, steps: int) -> dict:
    params = SamplingParams(temperature=0, max_tokens=steps + 2, ignore_eos=True)
    with LLM(path, num_kv_blocks=256, block_size=16, **kwargs) as llm:
        core = llm.engine
        for i in range(batch):
            core.add_request(str(i), [(7 * i + j) % 300 + 1 for j in range(24)], params)
        while any(r.seq.num_output_tokens == 0 for r in core._requests.values()):  # prefill (and the first token)
            core.step()
        comm = getattr(core.runner, "comm", None)
        if comm is not None:
            comm.reset_stats()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            deltas = core.step()
            times.append(time.perf_counter() - start)
            assert sum(len(d.token_ids) for d in deltas) == batch, "every step decodes the whole batch"
        calls = dict(comm.calls) if comm is not None else {}
        sent = dict(comm.bytes) if comm is not None else {}
        return {"step_ms": 1e3 * sorted(times)[len(times) // 2], "calls": calls, "bytes": sent, "cfg": llm.config}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    cfg = preset(args.preset)
    header = machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(random_model(cfg, seed=0), Path(tmp) / "fp8", fmt="fp8")
        for name, kwargs in layouts(ranks):
            n = kwargs.get("tensor_parallel_size", 1)
            got = measure(path, kwargs, args.batch, args.steps)
            formula = step_collectives(cfg, n, tokens=args.batch, sampled=args.batch,
                                       moe_combine=kwargs.get("moe_combine", "allreduce")) if n > 1 else {}
            per_step = {k: v / args.steps for k, v in got["calls"].items()}
            sent = {k: v / args.steps for k, v in got["bytes"].items()}
            expected_calls = sum(c for c, _ in formula.values())
            expected_bytes = sum(b for kind, (_, b) in formula.items() if kind in ("all_reduce", "gather"))
            measured_bytes = sent.get("all_reduce", 0) + sent.get("gather", 0)
            rows.append((name, n, got["step_ms"], sum(per_step.values()), expected_calls, measured_bytes,
                         expected_bytes, sent.get("all_to_all", 0), sent.get("broadcast", 0)))
            print(f"{name}: {got['step_ms']:.1f} ms/step, collectives/step {per_step}", flush=True)
    lines = [
        f"machine: {header}",
        f"model: {args.preset} preset, random weights, FP8 checkpoint; batch {args.batch}, {args.steps} decode steps "
        "(median step time); bytes are what rank 0 sends",
        "",
        "| layout | ranks | step ms | collectives / step (measured) | (formula) | all-reduce + gather bytes / step "
        "(measured) | (formula) | all-to-all bytes / step | broadcast bytes / step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, n, ms, calls, exp_calls, b, exp_b, a2a, bcast in rows:
        lines.append(f"| {name} | {n} | {ms:.1f} | {calls:.0f} | {exp_calls if n > 1 else 0} | {b:,.0f} | "
                     f"{exp_b:,} | {a2a:,.0f} | {bcast:,.0f} |")
    lines.append("")
    lines.append(f"per decoded token: divide by the batch ({args.batch}). Step times share this machine's cores "
                 "across the ranks: correctness here, not speed.")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

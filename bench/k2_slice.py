"""A K2-width slice in the official INT4 layout, run memory-mapped: load time, resident memory, decode tok/s and
the rate of weight reads against a memory-read probe measured in the same run.

The slice has K2's exact widths — hidden 7168, MLA with 64 heads, q LoRA 1536, kv LoRA 512, routed experts of
width 2048 (top-8), one shared expert, a dense first layer of width 18432, K2's 163,840-token vocabulary — and
fewer layers and experts (`--layers 3 --experts 96`: ~11 GB of files, more than a third of a 24 GB machine).
It is written in K2-Thinking's layout (routed experts INT4 `pack-quantized` group 32, everything else bf16) with
random values straight into the files (random nibbles, scales ~ 0.002: the same bytes to read as real
weights). `LLM(path)` then loads it memory-mapped with the weights as stored, float32 activations.

Weight bytes one decode token reads: every non-routed Linear weight of every layer, the 8 chosen experts of each
MoE layer, `lm_head`, one embedding row. GB/s = those bytes × tok/s; the probe is a 1 GiB float32 `sum`.

Usage:  python bench/k2_slice.py [--dir /tmp/k2_slice] [--layers 3] [--experts 96] [--threads 2] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import machine  # noqa: E402
from formats import read_probe  # noqa: E402

from kimi_k2.checkpoint.scheme import K2_THINKING_INT4, QuantScheme  # noqa: E402
from kimi_k2.checkpoint.sources import quantized_names  # noqa: E402
from kimi_k2.checkpoint.validate import ParamSpec  # noqa: E402
from kimi_k2.checkpoint.writer import write_checkpoint  # noqa: E402
from kimi_k2.config import preset  # noqa: E402
from kimi_k2.engine.llm import LLM  # noqa: E402
from kimi_k2.engine.sampling_params import SamplingParams  # noqa: E402
from kimi_k2.model.quant_linear import INT4_SCALE_DTYPE, int4_packed_shape, int4_scale_shape  # noqa: E402


class RandomSource:
    """A `WeightSource` of random values: bf16 N(0, 0.02) dense tensors, random INT4 nibbles with scales 0.002."""

    def __init__(self, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def dense(self, p: ParamSpec, dtype: torch.dtype) -> torch.Tensor:
        if "norm" in p.name:
            return torch.ones(p.shape, dtype=dtype)
        if p.fp32:
            return torch.zeros(p.shape, dtype=dtype)
        return (torch.randn(p.shape, generator=self.gen) * 0.02).to(dtype)

    def stored(self, p: ParamSpec, target: QuantScheme) -> dict[str, torch.Tensor] | None:
        if p.linear is None or not target.quantizes(p.linear):
            return None
        shape = (p.shape[0], p.shape[1])
        packed = torch.randint(-(2**31), 2**31 - 1, int4_packed_shape(shape), dtype=torch.int32, generator=self.gen)
        scale = torch.full(int4_scale_shape(shape, target.group_size), 0.002, dtype=INT4_SCALE_DTYPE)
        names = quantized_names(p.linear, "int4")
        return dict(zip(names, (packed, scale, torch.tensor(shape, dtype=torch.int32))))


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/k2_slice"))
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--experts", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=16, help="decode tokens measured (after 4 warm-up tokens)")
    ap.add_argument("--keep", action="store_true", help="keep the written slice for a later run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset("kimi-k2").replace(num_hidden_layers=args.layers, n_routed_experts=args.experts)
    header = machine()
    print(header, file=sys.stderr, flush=True)

    if not (args.dir / "config.json").is_file():
        start = time.perf_counter()
        write_checkpoint(RandomSource(), cfg, args.dir, K2_THINKING_INT4, torch.bfloat16, max_shard_bytes=2 * 2**30)
        print(f"wrote {args.dir} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    files = sum(f.stat().st_size for f in args.dir.glob("*.safetensors"))

    probe_before = read_probe()
    before = rss()
    start = time.perf_counter()
    llm = LLM(args.dir, kv_cache_memory=256 * 2**20, enable_prefix_caching=False)
    load_s = time.perf_counter() - start
    loaded = rss()

    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, cfg.vocab_size, (32,), generator=gen).tolist()
    params = SamplingParams(temperature=0, max_tokens=4 + args.tokens, ignore_eos=True)
    core = llm.engine
    core.add_request("slice", prompt, params)
    times: list[float] = []
    while core.has_unfinished():
        core.step()
        times.append(time.perf_counter())
    decode = times[4:]  # after the prefill step and 3 warm-up tokens
    tok_s = (len(decode) - 1) / (decode[-1] - decode[0])
    ran = rss()
    probe_after = read_probe()

    # bytes one decode token reads: the runner's weights as stored (experts: 8 of each MoE layer)
    routed = per_expert = 0
    other = 0
    for name, tensor in llm.model.state_dict().items():
        nbytes = tensor.numel() * tensor.element_size()
        if ".mlp.experts." in name:
            routed += nbytes
        elif name == "model.embed_tokens.weight":
            other += tensor.shape[1] * tensor.element_size()  # one row
        elif "norm" not in name and not name.endswith("e_score_correction_bias"):
            other += nbytes
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    per_expert = routed / (moe_layers * cfg.n_routed_experts)
    token_bytes = other + moe_layers * cfg.num_experts_per_tok * per_expert
    probe = max(probe_before, probe_after)
    rate = token_bytes * tok_s
    lines = [
        f"Machine: {header}.",
        f"Slice: K2 widths, {cfg.num_hidden_layers} layers ({moe_layers} MoE with {cfg.n_routed_experts} experts, top-"
        f"{cfg.num_experts_per_tok}), vocabulary {cfg.vocab_size:,}; K2-Thinking INT4 layout, {files / 1e9:.1f} GB of files; "
        f"{args.threads} threads, float32 activations, memory-mapped.",
        "",
        "| measurement | value |",
        "|---|---:|",
        f"| load time (validate, map, prepare) | {load_s:.1f} s |",
        f"| resident memory after load | {(loaded - before) / 1e9:.2f} GB |",
        f"| resident memory after {len(times)} steps | {(ran - before) / 1e9:.2f} GB |",
        f"| decode tok/s (batch 1, {len(decode) - 1} tokens) | {tok_s:.2f} |",
        f"| weight bytes per decode token | {token_bytes / 1e9:.2f} GB |",
        f"| weight reads | {rate / 1e9:.1f} GB/s |",
        f"| read probe (1 GiB fp32 sum; before / after) | {probe_before / 1e9:.1f} / {probe_after / 1e9:.1f} GB/s |",
        f"| weight reads / best probe | {rate / probe:.0%} |",
    ]
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

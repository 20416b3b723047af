"""Batch-1 decode, prefill and batched decode per weight format: the engine on the same random weights stored as
fp32, bf16, block FP8 and INT4 (kept as stored), optionally against llama.cpp on GGUFs of the same weights.

The `medium` preset's random weights are saved once as a bf16 checkpoint in the official layout, converted to
FP8 (K2-Instruct's scheme: every Linear but lm_head) and INT4 (K2-Thinking's: routed experts only), and each is
loaded with `LLM(path)` (weights kept as stored). Rounds alternate the formats (A, B, C, …) so drifting load on a
shared machine hits them alike; the table gives the best and the median of the rounds.

llama.cpp (`--gguf-dir DIR`): GGUF files named `F32.gguf`, `F16.gguf`, `Q8_0.gguf`, `Q4_0.gguf` converted from
the same bf16 checkpoint by bench/make_gguf.py; they are timed in the same rounds through llama-cpp-python with
the same thread count. Each GGUF is opened once (`llama_cpp.Llama`, with make_gguf's `llama_kwargs`: YaRN betas,
F32 KV cache); a round times only its decode (the cache reset, the prompt, then the timed greedy tokens, the
argmax taken with numpy on llama.cpp's logits buffer).

`--checkpoint-dir DIR` reuses a bf16 checkpoint (make_gguf's `OUT/bf16`) instead of writing the random one into a
temporary directory; `make_gguf.py --preset medium --seed 0` writes the same bytes as this script does, so either
way both engines run the same weights (pass it anyway to save the minute of writing them).

Usage:  python bench/formats.py [--preset medium] [--threads 2] [--rounds 5] [--gguf-dir DIR] [--checkpoint-dir DIR]
                                [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import machine, run_ours  # noqa: E402

from kimi_k2.checkpoint.writer import convert_checkpoint, save_model  # noqa: E402
from kimi_k2.config import preset  # noqa: E402
from kimi_k2.engine.llm import LLM  # noqa: E402
from kimi_k2.model.transformer import random_model  # noqa: E402

# (label, checkpoint format, compute dtype)
# Weights are loaded as stored (`LLM`'s default): a bf16 checkpoint's Linear weights stay bf16 under float32
# activations; "bf16-all" converts everything to bf16 (bf16 activations too).
FORMATS = [
    ("fp32", "fp32", torch.float32),
    ("bf16", "bf16", torch.float32),
    ("bf16-all", "bf16", torch.bfloat16),
    ("FP8 kept", "fp8", torch.float32),
    ("INT4 kept", "int4", torch.float32),
    ("INT4 kept, int8 activations", "int4", torch.float32),
]
GGUF = {"fp32": "F32", "bf16": "F16", "bf16-all": "F16", "FP8 kept": "Q8_0", "INT4 kept": "Q4_0",
        "INT4 kept, int8 activations": "Q4_0"}
ENGINE_OPTIONS = {"INT4 kept, int8 activations": {"int8_activations": True}}  # LLM keywords beyond the format


def read_probe(megabytes: int = 1024) -> float:
    """Bytes read per second by a sum over a large fp32 tensor (best of 3)."""
    t = torch.ones(megabytes * 2**20 // 4)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        t.sum()
        best = min(best, time.perf_counter() - start)
    return t.numel() * 4 / best


def open_llama(path: Path, cfg, threads: int):
    """A `llama_cpp.Llama` on one GGUF, set up as make_gguf's check validated it (same logits as ours)."""
    from llama_cpp import Llama

    from make_gguf import llama_kwargs

    return Llama(str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False,
                 **llama_kwargs(cfg))


def llama_decode(llm, prompt: list[int], new_tokens: int) -> float:
    """llama.cpp batch-1 decode tok/s after `prompt` (greedy over the raw logits, as shared BENCHMARKING.md says)."""
    import numpy as np

    n_vocab = llm.n_vocab()

    def argmax() -> int:
        return int(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).argmax())

    llm.reset()  # the next eval starts at position 0 and drops the previous round's cache entries
    llm.eval(prompt)
    token = argmax()
    start = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([token])
        token = argmax()
    return new_tokens / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--formats", default=";".join(f[0] for f in FORMATS), help="semicolon-separated labels to run")
    ap.add_argument("--gguf-dir", type=Path, help="llama.cpp GGUFs of the same weights (F32/F16/Q8_0/Q4_0.gguf)")
    ap.add_argument("--checkpoint-dir", type=Path,
                    help="the bf16 checkpoint to use (make_gguf.py's OUT/bf16) instead of writing the random one")
    ap.add_argument("--no-batch", action="store_true", help="skip prefill and 16-concurrent measurements")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    cfg = preset(args.preset)
    wanted = set(args.formats.split(";"))
    formats = [f for f in FORMATS if f[0] in wanted]
    gen = torch.Generator().manual_seed(0)

    def prompt(length: int) -> list[int]:
        return torch.randint(0, cfg.vocab_size, (length,), generator=gen).tolist()

    header = machine()
    print(header, file=sys.stderr, flush=True)
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="kimi_k2_formats_") as workdir:
        root = Path(workdir)
        if args.checkpoint_dir is not None:
            bf16 = args.checkpoint_dir
            stored = json.loads((bf16 / "config.json").read_text(encoding="utf-8"))
            expected = cfg.replace(quantization_config=None, torch_dtype="bfloat16").to_hf()
            if stored != expected:
                print(f"warning: {bf16}/config.json differs from the {args.preset} preset's", file=sys.stderr)
        else:
            bf16 = root / "bf16"
            save_model(random_model(cfg, seed=0), bf16, fmt="bf16")
        engines = {}
        for label, fmt, dtype in formats:
            path = bf16 if fmt == "bf16" else root / fmt
            if not (path / "config.json").is_file():
                convert_checkpoint(bf16, path, fmt)
            llm = LLM(path, dtype=dtype, kv_cache_memory=512 * 2**20, enable_prefix_caching=False,
                      max_num_batched_tokens=1024, **ENGINE_OPTIONS.get(label, {}))
            engines[label] = llm.engine
            run_ours(llm.engine, [prompt(16)], 4)  # warm-up (and the kernels' first build)
        llamas = {}
        if args.gguf_dir is not None:
            for label, _, _ in formats:
                gguf = args.gguf_dir / f"{GGUF[label]}.gguf"
                if GGUF[label] not in llamas and gguf.is_file():
                    llamas[GGUF[label]] = open_llama(gguf, cfg, args.threads)
                    llama_decode(llamas[GGUF[label]], prompt(16), 4)  # warm-up (pages the weights in)
        decode_prompt, prefill_prompt = prompt(128), prompt(512)
        batch_prompts = [prompt(128) for _ in range(16)]
        probes: list[float] = []
        for r in range(args.rounds):
            probes.append(read_probe())
            for label, _, _ in formats:
                row = results.setdefault(label, {})
                core = engines[label]
                row.setdefault("decode", []).append(run_ours(core, [decode_prompt], args.decode_tokens + 1).decode_tok_s)
                if not args.no_batch:
                    row.setdefault("prefill", []).append(512 / run_ours(core, [prefill_prompt], 1).prefill_s)
                    row.setdefault("batch16", []).append(run_ours(core, batch_prompts, args.decode_tokens + 1).decode_tok_s)
                if GGUF[label] in llamas:
                    row.setdefault("llama", []).append(llama_decode(llamas[GGUF[label]], decode_prompt, args.decode_tokens))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{label} {max(results[label]['decode']):.1f}" for label, _, _ in formats), file=sys.stderr, flush=True)

    def cell(values: list[float] | None) -> str:
        return "-" if not values else f"{max(values):.1f} ({statistics.median(values):.1f})"

    lines = [
        f"Machine: {header}.",
        f"Model: `{args.preset}` preset, random weights; {args.threads} threads; best (median) of {args.rounds} "
        f"alternating rounds; decode = batch 1 after a 128-token prompt, {args.decode_tokens} tokens, greedy. "
        f"Read probe (1 GiB fp32 sum): best {max(probes) / 1e9:.1f} GB/s.",
        "",
        "| format (compute dtype) | decode tok/s | llama.cpp | ours / llama.cpp | prefill 512 tok/s | 16 concurrent tok/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, _, dtype in formats:
        row = results[label]
        llama = row.get("llama")
        ratio = f"{max(row['decode']) / max(llama):.2f}×" if llama else "-"
        name = f"{label} ({str(dtype).removeprefix('torch.')})"
        peer = f"{GGUF[label]} {cell(llama)}" if llama else "-"
        lines.append(f"| {name} | {cell(row['decode'])} | {peer} | {ratio} | {cell(row.get('prefill'))} | {cell(row.get('batch16'))} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

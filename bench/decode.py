"""Decode / prefill / concurrency benchmark of the engine against HF transformers on the same weights.

Builds transformers' `DeepseekV3ForCausalLM` from `cfg.to_hf()` (random weights, HF's own init), loads the
very same tensors into our model (the state_dict keys are the checkpoint's, so no renaming), checks that the
two give the same logits, then measures both in the same process, fp32:

* decode tokens/s at batch 1 after a prompt of 128, 1K and 4K tokens (steady state: from the first generated
  token to the last; HF `generate` with its default DynamicCache, greedy, timed by a streamer);
* prefill tokens/s for a 512-token prompt (prompt length ÷ time to the first token);
* aggregate decode throughput with 1, 4 and 16 concurrent 128-token requests (ours: continuous batching;
  HF: one batched `generate`);
* KV bytes per token (ours: the paged latent pool; HF: per-head K and V, the planner's formula);
* the fraction of the memory-bandwidth roofline reached at batch 1: weight bytes one token reads (every active
  parameter once, one embedding row) × tokens/s, over a measured copy bandwidth (bytes read + written per
  second by `Tensor.copy_` of 512 MiB, STREAM's convention).

Usage:  python bench/decode.py [--preset medium] [--threads N] [--skip-hf] [--markdown out.md]
On a machine shared with other jobs, OpenMP's spinning barriers can make 2-thread runs 5-10× slower: run with
`OMP_WAIT_POLICY=PASSIVE` (it applies to both engines) or `--threads 1`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_name import cpu_name  # noqa: E402

from kimi_k2.config import ModelConfig, preset  # noqa: E402
from kimi_k2.engine.core import EngineCore  # noqa: E402
from kimi_k2.engine.sampling_params import SamplingParams  # noqa: E402
from kimi_k2.planner.kv import per_head_kv_bytes_per_token  # noqa: E402
from kimi_k2.planner.params import count_params  # noqa: E402


def machine() -> str:
    cpu = cpu_name()
    import transformers

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}), transformers {transformers.__version__}, "
        f"load average at start {load:.1f}"
    )


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes read + written per second by a large tensor copy (best of `repeats`)."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def weight_bytes_per_token(cfg: ModelConfig, dtype_bytes: int = 4) -> int:
    """Every active parameter read once, except the embedding table (one row)."""
    counts = count_params(cfg)
    return (counts.active - counts.embed_tokens + cfg.hidden_size) * dtype_bytes


# ---------------------------------------------------------------------- models
def build_pair(cfg: ModelConfig, seed: int, workdir: Path):
    """HF's model with its own random init, saved with `save_pretrained` and loaded by us from those files."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from kimi_k2.checkpoint.loader import load_model

    torch.manual_seed(seed)
    # model_type must stay deepseek_v3: transformers picks its checkpoint-layout conversion (fused experts in
    # memory ↔ one tensor per expert on disk) by model_type
    hf_config = {k: v for k, v in cfg.to_hf().items() if k != "model_type"}
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(**hf_config)).float().eval()
    hf.save_pretrained(workdir, safe_serialization=True)
    ours = load_model(workdir, dtype=torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (1, 64))
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids)).abs().max().item()
    return hf, ours, diff


# ---------------------------------------------------------------------- our engine
@dataclass
class Run:
    prefill_s: float  # submission → every request has its first token
    decode_tok_s: float  # tokens after that point ÷ time after that point


def run_ours(core: EngineCore, prompts: list[list[int]], new_tokens: int) -> Run:
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    for i, p in enumerate(prompts):
        core.add_request(f"r{time.monotonic_ns()}-{i}", p, params)
    have_first: set[str] = set()
    t_first = None
    after = 0
    while core.has_unfinished():
        deltas = core.step()
        now = time.perf_counter()
        if t_first is None:
            have_first.update(d.request_id for d in deltas)
            if len(have_first) == len(prompts):
                t_first = now
        else:
            after += sum(len(d.token_ids) for d in deltas)
    assert t_first is not None
    elapsed = time.perf_counter() - t_first
    return Run(t_first - start, after / elapsed if after else float("nan"))


# ---------------------------------------------------------------------- HF
class _Clock:
    """A transformers streamer that only records when each generated step arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first sends the prompt
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_hf(hf, prompts: list[list[int]], new_tokens: int) -> Run:
    ids = torch.tensor(prompts)
    clock = _Clock()
    start = time.perf_counter()
    with torch.inference_mode():
        hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            streamer=clock,
        )
    t_first = clock.times[0]
    steps_after = len(clock.times) - 1
    elapsed = clock.times[-1] - t_first
    return Run(t_first - start, len(prompts) * steps_after / elapsed if steps_after else float("nan"))


# ---------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--contexts", default="128,1024,4096", help="decode contexts (comma-separated)")
    ap.add_argument("--decode-tokens", type=int, default=32, help="tokens generated per decode measurement")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--skip-hf", action="store_true", help="measure only our engine")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per measurement (3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    cfg = preset(args.preset)
    contexts = [int(c) for c in args.contexts.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    n = args.decode_tokens
    gen = torch.Generator().manual_seed(args.seed)

    def prompt(length: int) -> list[int]:
        return torch.randint(0, cfg.vocab_size, (length,), generator=gen).tolist()

    header = machine()
    print(header, file=sys.stderr)
    print("building HF model and sharing its weights ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="kimi_k2_bench_") as workdir:
        hf, ours, diff = build_pair(cfg, args.seed, Path(workdir))
    print(f"max |logit difference| ours vs HF: {diff:.2e}", file=sys.stderr)
    core = EngineCore(ours, kv_cache_memory=512 * 2**20, enable_prefix_caching=False, max_num_batched_tokens=1024)
    bandwidth = copy_bandwidth()

    rows: list[tuple[str, float, float | None]] = []

    def measure(name: str, mine_fn, theirs_fn) -> float:
        """Best of `--repeats` runs of each, alternating ours and HF so that drifting load hits both alike."""
        mine, theirs = 0.0, None
        for _ in range(args.repeats):
            mine = max(mine, mine_fn())
            if not args.skip_hf:
                theirs = max(theirs or 0.0, theirs_fn())
        rows.append((name, mine, theirs))
        ratio = f"{mine / theirs:.2f}×" if theirs else "-"
        print(f"{name:<44} ours {mine:9.1f}   HF {theirs if theirs is not None else float('nan'):9.1f}   {ratio}", file=sys.stderr, flush=True)
        return mine

    run_ours(core, [prompt(16)], 4)  # warm-up
    if not args.skip_hf:
        run_hf(hf, [prompt(16)], 4)
    decode_at: dict[int, float] = {}
    for ctx in contexts:
        p = prompt(ctx)
        decode_at[ctx] = measure(
            f"decode tok/s, batch 1, {ctx}-token context",
            lambda: run_ours(core, [p], n + 1).decode_tok_s,
            lambda: run_hf(hf, [p], n + 1).decode_tok_s,
        )
    p = prompt(512)
    measure(
        "prefill tok/s, 512-token prompt",
        lambda: 512 / run_ours(core, [p], 1).prefill_s,
        lambda: 512 / run_hf(hf, [p], 1).prefill_s,
    )
    throughput: dict[int, float] = {}
    for k in concurrency:
        ps = [prompt(128) for _ in range(k)]
        throughput[k] = measure(
            f"aggregate decode tok/s, {k} concurrent",
            lambda: run_ours(core, ps, n + 1).decode_tok_s,
            lambda: run_hf(hf, ps, n + 1).decode_tok_s,
        )

    kv_ours = core.pool.bytes_per_token
    kv_hf = per_head_kv_bytes_per_token(cfg, 4)
    w_bytes = weight_bytes_per_token(cfg)
    first_ctx = contexts[0]
    achieved = w_bytes * decode_at[first_ctx]
    lines = [
        f"Machine: {header}.",
        "",
        f"Model: `{args.preset}` preset, {count_params(cfg).total / 1e6:.0f}M total / {count_params(cfg).active / 1e6:.0f}M "
        f"active parameters, random weights, fp32; {n} generated tokens per decode measurement, greedy; "
        f"best of {args.repeats} runs each, ours and HF alternating.",
        "",
        "| measurement | ours | HF transformers | ours / HF |",
        "|---|---:|---:|---:|",
    ]
    for name, mine, theirs in rows:
        lines.append(f"| {name} | {mine:.1f} | {'-' if theirs is None else f'{theirs:.1f}'} | {'-' if not theirs else f'{mine / theirs:.2f}×'} |")
    lines.append(f"| KV cache bytes per token | {kv_ours:,} | {kv_hf:,} | {kv_ours / kv_hf:.3f}× |")
    lines += [
        "",
        f"- Decode at {contexts[-1]} tokens of context is {decode_at[contexts[-1]] / decode_at[first_ctx]:.2f}× the "
        f"rate at {first_ctx}.",
        f"- {concurrency[-1]} concurrent requests give {throughput[concurrency[-1]] / throughput[concurrency[0]]:.2f}× the "
        f"{concurrency[0]}-request throughput.",
        f"- Roofline at batch 1, {first_ctx}-token context: {w_bytes / 1e6:.0f} MB of weights per token × "
        f"{decode_at[first_ctx]:.1f} tok/s = {achieved / 1e9:.1f} GB/s, over a measured copy bandwidth of "
        f"{bandwidth / 1e9:.1f} GB/s (read + write) = {achieved / bandwidth:.0%} (roofline: "
        f"{bandwidth / w_bytes:.1f} tok/s).",
        f"- Max |logit difference| between our model and HF on the shared weights: {diff:.1e}.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

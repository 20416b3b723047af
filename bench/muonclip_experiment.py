"""AdamW vs Muon vs MuonClip on a real corpus: the same small K2-architecture model, the same tokens.

Corpus: the Python standard library's `*.py` sources on this machine (site-packages excluded), held out by
file (5%). Tokenizer: a K2-format BPE tokenizer (`kimi_k2.tokenizer.bpe_trainer`) trained on the training files
only. Model: MLA with q LoRA, MoE with a shared expert and a dense first layer, YaRN — see `MODEL` below.

Order: Muon, then AdamW, then MuonClip with τ = `--tau-fraction` × the median per-step max logit over the
second half of the Muon run (so that the cap bites), unless `--tau` is given. `--optimizers` picks the runs (to
run AdamW and MuonClip in two processes once Muon is done). Then the summary: a micro-benchmark of one optimizer
step per optimizer (bf16 and float32 Newton–Schulz), `results.json` in the output directory, a table, and the
comparison PNGs in `--img-dir`.

    .venv/bin/python bench/muonclip_experiment.py --out runs/muonclip_experiment --img-dir docs/img
    # or: --optimizers muon --no-summary; then adamw and muonclip in parallel; then --optimizers (none) for the summary
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from kimi_k2.config import preset
from kimi_k2.model import random_model
from kimi_k2.tokenizer.bpe_trainer import train_and_save
from kimi_k2.train.data import read_text, split_holdout
from kimi_k2.train.muonclip import MuonClip
from kimi_k2.train.plot import plot_runs
from kimi_k2.train.trainer import TrainConfig, read_log, train

STDLIB = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
MODEL = dict(  # a small K2: every architectural feature on, ~2.7M parameters with a 4,096-token vocabulary
    hidden_size=128,
    intermediate_size=384,  # dense layer 0
    moe_intermediate_size=64,  # each routed expert and the shared expert
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    n_routed_experts=16,
    num_experts_per_tok=2,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    first_k_dense_replace=1,
    q_lora_rank=64,
    kv_lora_rank=64,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def corpus_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())


def run_config(args: argparse.Namespace, out: Path, optimizer: str, tau: float, tokenizer: Path, files: list[Path]) -> TrainConfig:
    return TrainConfig(
        run_dir=str(out / "runs" / optimizer),
        data=[str(f) for f in files],
        tokenizer=str(tokenizer),
        model="tiny",
        model_overrides=MODEL,
        holdout_fraction=args.holdout,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        max_steps=args.steps,
        optimizer=optimizer,
        lr=args.lr,
        weight_decay=0.1,
        qk_clip_tau=tau,
        ns_dtype=args.ns_dtype,
        warmup_steps=args.warmup,
        decay_fraction=0.2,
        min_lr_ratio=0.1,
        grad_clip=1.0,
        eval_interval=args.eval_interval,
        eval_batches=args.eval_batches,
        seed=0,
    )


def summarize(run_dir: Path, tau: float | None) -> dict[str, Any]:
    records = read_log(run_dir)
    train_rows = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    half = train_rows[len(train_rows) // 2 :]
    return {
        "final_eval_loss": evals[-1]["eval_loss"],
        "final_train_loss_mean20": statistics.fmean(r["loss"] for r in train_rows[-20:]),
        "tokens": train_rows[-1]["tokens"],
        "steps": len(train_rows),
        "peak_max_logit": max(r["max_logit"] for r in train_rows),
        "final_max_logit": train_rows[-1]["max_logit"],
        "median_max_logit_2nd_half": statistics.median(r["max_logit"] for r in half),
        "clipped_fraction_mean": statistics.fmean(r["clipped_fraction"] for r in train_rows),
        "steps_with_clipping": sum(r["clipped_fraction"] > 0 for r in train_rows),
        "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in train_rows),
        "optimizer_ms_median": 1000 * statistics.median(r["optimizer_s"] for r in train_rows),
        "imbalance_final_mean20": statistics.fmean(r["imbalance"] for r in train_rows[-20:]),
        "train_s": sum(r["step_s"] for r in train_rows),  # summed step times (evaluation not included)
        "tau": tau,
    }


def optimizer_step_cost(vocab: int, repeats: int = 20) -> dict[str, float]:
    """Median ms of one `optimizer.step()` (with QK-Clip for muonclip) on the experiment's model, random grads."""
    cfg = preset("tiny").replace(vocab_size=vocab, **MODEL)
    model = random_model(cfg)
    logits = [torch.full((cfg.num_attention_heads,), 1e9) for _ in range(cfg.num_hidden_layers)]  # every head clips
    cases = {
        "adamw": dict(use_muon=False, qk_clip_tau=None),
        "muon (NS float32)": dict(qk_clip_tau=None, ns_dtype="float32"),
        "muonclip (NS float32, all heads clipped)": dict(qk_clip_tau=1.0, ns_dtype="float32"),
        "muon (NS bfloat16)": dict(qk_clip_tau=None, ns_dtype="bfloat16"),
    }
    out = {}
    for name, kwargs in cases.items():
        opt = MuonClip.for_model(model, lr=1e-4, **kwargs)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        times = []
        for _ in range(repeats if "bfloat16" not in name else 4):  # emulated bf16 on CPU: seconds per step
            start = time.perf_counter()
            opt.step(max_logits=logits)
            times.append(time.perf_counter() - start)
        out[name] = 1000 * statistics.median(times[1:])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/muonclip_experiment")
    parser.add_argument("--img-dir", default="docs/img")
    parser.add_argument("--corpus", default=str(STDLIB))
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--holdout", type=float, default=0.05)
    parser.add_argument("--eval-interval", type=int, default=30)
    parser.add_argument("--eval-batches", type=int, default=12)
    parser.add_argument("--ns-dtype", default="float32", help="float32 on CPUs without bf16 units (see docs)")
    parser.add_argument("--tau", type=float, default=None, help="QK-Clip threshold (default: from the Muon run)")
    parser.add_argument("--tau-fraction", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 survives a shared, busy CPU best)")
    parser.add_argument("--optimizers", nargs="*", default=["muon", "adamw", "muonclip"], choices=["muon", "adamw", "muonclip"],
                        help="runs to train, in order (muonclip's τ comes from the muon run's log)")
    parser.add_argument("--summary", action=argparse.BooleanOptionalAction, default=True,
                        help="after the runs: step-cost benchmark, results.json, table and PNGs from the logs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = corpus_files(Path(args.corpus))
    train_files, eval_files = split_holdout(files, args.holdout, seed=0)  # the split the trainer will make
    tokenizer = out / "tokenizer"
    if not (tokenizer / "tiktoken.model").is_file():
        start = time.perf_counter()
        bpe = train_and_save((read_text(f)[0] for f in train_files), args.vocab, tokenizer)
        logging.info("trained a %d-merge BPE tokenizer on %d files in %.0f s", bpe.merges, len(train_files), time.perf_counter() - start)

    tau_file = out / "tau.json"
    for optimizer in args.optimizers:
        tau = args.tau
        if optimizer == "muonclip" and tau is None:
            muon = summarize(out / "runs" / "muon", None)
            tau = float(f"{args.tau_fraction * muon['median_max_logit_2nd_half']:.2g}")
            logging.info("QK-Clip tau = %g (%.2f x the Muon run's median max logit)", tau, args.tau_fraction)
        if optimizer == "muonclip":
            tau_file.write_text(json.dumps({"tau": tau}) + "\n")
        train(run_config(args, out, optimizer, tau or 100.0, tokenizer, files))
    if not args.summary:
        return

    tau = json.loads(tau_file.read_text())["tau"]
    info = json.loads((out / "runs" / "muon" / "run.json").read_text())
    results: dict[str, Any] = {
        "machine": machine(),
        "corpus": {"root": args.corpus, "files": len(files), "train_files": len(train_files), "eval_files": len(eval_files),
                   "bytes": sum(f.stat().st_size for f in files)},  # fmt: skip
        "args": vars(args),
        "model": MODEL,
        "parameters": info["parameters"],
        "train_tokens_available": info["train_tokens"],
        "eval_tokens": info["eval_tokens"],
        "runs": {o: summarize(out / "runs" / o, tau if o == "muonclip" else None) for o in ("adamw", "muon", "muonclip")},
        "optimizer_step_ms": optimizer_step_cost(info["model_config"]["vocab_size"]),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_runs([out / "runs" / o for o in ("adamw", "muon", "muonclip")], args.img_dir, labels=["AdamW", "Muon", f"MuonClip τ={tau:g}"], tau=tau, prefix="muonclip_")

    print(f"machine: {results['machine']}")
    print(f"model: {results['parameters'] / 1e6:.2f}M parameters; corpus {len(files)} files, "
          f"{results['train_tokens_available'] / 1e6:.2f}M train tokens, {results['eval_tokens'] / 1e3:.0f}K held-out tokens")  # fmt: skip
    print(f"{'optimizer':<10} {'held-out loss':>13} {'peak max logit':>14} {'final max logit':>15} {'tokens/s':>9} {'opt step ms':>11} {'train s':>7}")
    for name, r in results["runs"].items():
        print(f"{name:<10} {r['final_eval_loss']:>13.4f} {r['peak_max_logit']:>14.2f} {r['final_max_logit']:>15.2f} "
              f"{r['tokens_per_s_median']:>9.0f} {r['optimizer_ms_median']:>11.1f} {r['train_s']:>7.0f}")  # fmt: skip
    print("optimizer step alone (ms):", json.dumps(results["optimizer_step_ms"]))


if __name__ == "__main__":
    main()

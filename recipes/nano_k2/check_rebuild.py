"""Does a rebuild of the nano K2 recipe end where the first build did? A cheap check of its start.

Reruns `build.py`'s data, tokenizer and tokens stages into a second work directory and compares every file they
write byte for byte with the first build's; then trains the first `--steps` steps of phase 1 there (the same
schedule as the full run) and compares each step's loss, gradient norm and max attention logit with the first
build's `run/log.jsonl`, exactly (bit for bit); with `--steps` equal to the run's length (`--steps all`) it is a
whole rebuild, and the final weights (`model.safetensors`) are compared byte for byte too. Training is seeded (weights, window order) and runs the same
float32 kernels, so on the same machine and thread count equal starts mean an equal end; another CPU or thread
count rounds differently and is not covered.

    python recipes/nano_k2/check_rebuild.py --first runs/nano_k2 --second runs/nano_k2_rebuild --steps 100
    python recipes/nano_k2/check_rebuild.py --steps all     # the whole training run: same weights at the end?
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build  # noqa: E402  (the recipe, beside this file)

COMPARED_FIELDS = ("loss", "grad_norm", "max_logit")


def stage_files(work: Path) -> list[Path]:
    """The files the data, tokenizer and tokens stages write, relative to the work directory."""
    names = [Path("data/train.jsonl"), Path("data/heldout.jsonl"), Path("windows.json")]
    names += [Path("tokenizer") / n for n in build.TOKENIZER_FILES]
    names += [Path(f"{split}{suffix}") for split in ("train", "heldout") for suffix in (".npy", ".mask.npy")]
    return [n for n in names if (work / n).is_file()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare_stages(first: Path, second: Path) -> list[str]:
    """The stage files that differ (or exist in one build only)."""
    names = sorted(set(stage_files(first)) | set(stage_files(second)))
    return [str(n) for n in names if not (first / n).is_file() or not (second / n).is_file() or digest(first / n) != digest(second / n)]


def train_records(run_dir: Path, steps: int) -> list[dict]:
    from kimi_k2.train.trainer import read_log

    return [r for r in read_log(run_dir) if r["kind"] == "train" and r["step"] <= steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first", type=Path, default=build.ROOT / "runs" / "nano_k2", help="the first build's work directory")
    parser.add_argument("--second", type=Path, default=build.ROOT / "runs" / "nano_k2_rebuild")
    parser.add_argument("--steps", default="100", help="how many of phase 1's steps to retrain and compare, or `all`")
    parser.add_argument("--seed", type=int, default=0, help="the data seed the first build used (build.py --seed)")
    args = parser.parse_args()
    info = json.loads((build.phase_run_dir(args.first, 1) / "run.json").read_text())
    cfg = info["config"]
    steps = cfg["max_steps"] if args.steps == "all" else int(args.steps)
    if not 0 < steps <= cfg["max_steps"]:
        raise SystemExit(f"--steps {args.steps}: the first build trained {cfg['max_steps']} steps in phase 1")
    theirs = train_records(build.phase_run_dir(args.first, 1), steps)
    if len(theirs) < steps:
        raise SystemExit(f"the first build's log has {len(theirs)} training steps, fewer than --steps {steps}")
    args.second.mkdir(parents=True, exist_ok=True)
    build.stage_data(args.second, _conversations(args.first), args.seed)
    build.stage_tokenizer(args.second, _vocab_size(args.first))
    build.stage_tokens(args.second, cfg["seq_len"])
    differing = compare_stages(args.first, args.second)
    print("stages data, tokenizer, tokens: " + ("identical" if not differing else f"DIFFER in {', '.join(differing)}"))

    from kimi_k2.train.trainer import Trainer, TrainConfig, latest_checkpoint

    run_cfg = TrainConfig(**{**cfg, "run_dir": str(build.phase_run_dir(args.second, 1)),
                             "data": [str(args.second / "train.npy")], "eval_data": [str(args.second / "heldout.npy")],
                             "tokenizer": str(args.second / "tokenizer")})  # fmt: skip
    if Path(run_cfg.run_dir).exists():
        shutil.rmtree(run_cfg.run_dir)  # a previous check's run
    started = time.time()
    Trainer(run_cfg).run(stop_at=steps)
    print(f"trained {steps} steps in {(time.time() - started) / 60:.1f} min")
    ours = train_records(build.phase_run_dir(args.second, 1), steps)
    mismatched = [(a["step"], f) for a, b in zip(ours, theirs) for f in COMPARED_FIELDS if a[f] != b[f]]
    if mismatched:
        step, field = mismatched[0]
        print(f"training: {len(mismatched)} values differ over {steps} steps, first at step {step} ({field})")
        raise SystemExit(1)
    print(f"training: the first {steps} steps' {', '.join(COMPARED_FIELDS)} are bit-identical")
    if steps == cfg["max_steps"]:
        weights = [latest_checkpoint(build.phase_run_dir(w, 1)) / "model.safetensors" for w in (args.first, args.second)]
        same = digest(weights[0]) == digest(weights[1])
        print(f"final weights: {'identical' if same else 'DIFFER'} ({weights[0]} vs {weights[1]})")
        differing += [] if same else ["final weights"]
    if differing:
        raise SystemExit(1)


def _conversations(work: Path) -> int:
    return sum(1 for line in (work / "data" / "train.jsonl").open(encoding="utf-8") if line.strip())


def _vocab_size(work: Path) -> int:
    from kimi_k2.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(work / "tokenizer").vocab_size


if __name__ == "__main__":
    main()

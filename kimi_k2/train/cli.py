"""`kimi-k2 train` and `kimi-k2 plot`.

`train`'s flags are generated from `TrainConfig`'s fields (one flag per field, `--max-steps` for `max_steps`, the
field's help text), so the CLI and the Python API cannot drift apart. `--set KEY=VALUE` changes a model config
field (VALUE is JSON: `--set num_hidden_layers=4 --set q_lora_rank=null`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Any

from kimi_k2.train.data import BIN_DTYPES
from kimi_k2.train.muonclip import NS_DTYPES
from kimi_k2.train.trainer import DTYPES, OPTIMIZERS, TrainConfig

_LIST_FIELDS = {"data": str, "eval_data": str, "adam_betas": float}
_OPTIONAL_STR = {"init_from", "tokenizer"}
_CHOICES = {
    "optimizer": OPTIMIZERS,
    "dtype": tuple(DTYPES),
    "ns_dtype": tuple(NS_DTYPES),
    "bin_dtype": tuple(BIN_DTYPES),
}


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a K2-architecture model (MuonClip, AdamW or Muon) on text files or token arrays",
        description="Train a K2-architecture model. Writes log.jsonl and HF-layout checkpoints into --run-dir.",
    )
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.name == "model_overrides":
            p.add_argument("--set", dest="model_overrides", action="append", type=_parse_override, default=[],
                           metavar="KEY=VALUE", help=f"{help_text} (JSON value; repeatable)")  # fmt: skip
        elif f.name in _LIST_FIELDS:
            extra = {"required": True} if f.name == "data" else {"default": None}
            nargs = 2 if f.name == "adam_betas" else "+"
            p.add_argument(flag, nargs=nargs, type=_LIST_FIELDS[f.name], help=help_text, **extra)
        elif isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        elif f.name == "vocab_size":
            p.add_argument(flag, type=int, default=None, help=help_text)
        elif f.name in _OPTIONAL_STR:
            p.add_argument(flag, default=None, help=help_text)
        elif f.name == "run_dir":
            p.add_argument(flag, required=True, help=help_text)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, choices=_CHOICES.get(f.name),
                           help=f"{help_text} (default: {f.default})")  # fmt: skip
    p.set_defaults(func=run_train)

    q = subparsers.add_parser("plot", help="PNG charts (loss, max attention logit, expert imbalance) of training runs")
    q.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one run, or several to overlay")
    q.add_argument("--out", default=None, help="output directory (default: RUN_DIR/plots of the first run)")
    q.add_argument("--tau", type=float, default=None, help="draw the QK-Clip threshold on the max-logit chart")
    q.set_defaults(func=run_plot)


def run_train(args: argparse.Namespace) -> int:
    from kimi_k2.train.trainer import latest_checkpoint, read_log, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "model_overrides"}
    for name in _LIST_FIELDS:
        if values[name] is None:
            values.pop(name)
    values["model_overrides"] = dict(args.model_overrides)
    run_dir = train(TrainConfig(**values))
    evals = [r for r in read_log(run_dir) if r["kind"] == "eval"]
    print(f"run: {run_dir}")
    if evals:
        print(f"held-out loss at step {evals[-1]['step']}: {evals[-1]['eval_loss']:.4f}")
    print(f"checkpoint: {latest_checkpoint(run_dir)}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kimi_k2.train.plot import plot_runs

    out = args.out or str(Path(args.run_dirs[0]) / "plots")
    for path in plot_runs(args.run_dirs, out, tau=args.tau):
        print(path)
    return 0

"""The `kimi-k2` command line.

Each area of the package owns its subcommands in a `cli.py` of its own that exposes
`register(subparsers) -> None`; this file only collects them, so adding a command never touches another area's
code. A subcommand's handler is stored as `func` on its parser and returns the process exit code.

Only the module of the command being run is imported: `kimi-k2 --help` lists the commands from `COMMANDS`
alone (no torch import, well under a second), and `kimi-k2 serve ...` never imports the trainer. A test checks
that the help texts here equal the ones the modules register.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module that registers it, its one-line help). Order = order in `kimi-k2 --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("kimi_k2.info", "config summary and exact parameter counts of a preset or checkpoint"),
    "demo": ("kimi_k2.demo", "serve the built-in nano K2 model and run a tool-calling conversation with the openai SDK"),
    "plan": ("kimi_k2.planner.cli", "memory, GPU count and speed bounds for a K2-family model"),
    "tokenizer": ("kimi_k2.tokenizer.cli", "train or inspect a K2-format tokenizer"),
    "verify": ("kimi_k2.checkpoint.cli", "validate a checkpoint directory against its config.json without reading weights"),
    "convert": ("kimi_k2.checkpoint.cli", "convert a checkpoint to bf16, fp32, block FP8 or INT4 (HF layout)"),
    "generate": ("kimi_k2.engine.cli", "answer one prompt with a checkpoint, streaming the text"),
    "chat": ("kimi_k2.engine.cli", "interactive streaming chat with a checkpoint (shows tool calls)"),
    "serve": ("kimi_k2.server.cli", "serve a model over OpenAI- and Anthropic-compatible HTTP APIs"),
    "eval": ("kimi_k2.eval.cli", "evaluate an OpenAI-compatible K2 endpoint: tool use, reproducibility"),
    "train": ("kimi_k2.train.cli", "train a K2-architecture model (MuonClip, AdamW or Muon) on text files or token arrays"),
    "plot": ("kimi_k2.train.cli", "PNG charts (loss, max attention logit, expert imbalance) of training runs"),
}
COMMAND_MODULES = list(dict.fromkeys(module for module, _ in COMMANDS.values()))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: with a known command, that command's module registers its full parser; without
    one (`--help`, a typo), the commands are listed from `COMMANDS`. `argv=None`: every module registers."""
    parser = argparse.ArgumentParser(
        prog="kimi-k2",
        description="Kimi K2 in pure PyTorch: inspect, load, convert, run, serve, train and plan K2-family models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if argv is None:
        modules = COMMAND_MODULES
    else:
        command = next((a for a in argv if not a.startswith("-")), None)
        modules = [COMMANDS[command][0]] if command in COMMANDS else []
    for name in modules:
        importlib.import_module(name).register(sub)
    if not modules:
        for name, (_, help_text) in COMMANDS.items():
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:  # user-facing errors carry their own message
        print(f"kimi-k2 {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The `kimi-k2` command line.

Each area of the package owns its subcommands in a `cli.py` of its own that exposes
`register(subparsers) -> None`; this file only collects them, so adding a command never touches another area's
code. A subcommand's handler is stored as `func` on its parser and returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define `register(subparsers)`. Order = order in `kimi-k2 --help`.
COMMAND_MODULES = [
    "kimi_k2.info",
    "kimi_k2.demo",
    "kimi_k2.planner.cli",
    "kimi_k2.tokenizer.cli",
    "kimi_k2.checkpoint.cli",
    "kimi_k2.engine.cli",
    "kimi_k2.server.cli",
    "kimi_k2.eval.cli",
    "kimi_k2.train.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kimi-k2",
        description="Kimi K2 in pure PyTorch: inspect, load, convert, run, serve, train and plan K2-family models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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

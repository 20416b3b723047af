"""`kimi-k2 eval tools | reproduce | compare`: measure an OpenAI-compatible K2 endpoint, ours or a vendor's.

    kimi-k2 eval tools --base-url http://127.0.0.1:8000/v1 --model nano-k2 --output nano.json
    kimi-k2 eval tools --base-url https://vendor.example/v1 --model kimi-k2 --api-key "$KEY" --reference nano.json
    kimi-k2 eval compare nano.json vendor.json
    kimi-k2 eval reproduce --base-url http://127.0.0.1:8000/v1 --model nano-k2

Results go to the terminal as tables and, with `--output`, to a JSON file with a manifest. A progress bar shows
on a terminal (tqdm on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _need_http() -> None:
    try:
        import httpx  # noqa: F401
        import jsonschema  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"kimi-k2 eval needs the 'eval' extra ({exc.name} is missing): pip install 'kimi-k2[eval]'") from None


@contextmanager
def _progress(total: int, desc: str) -> Iterator[Callable[[int], None]]:
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="req", disable=not sys.stderr.isatty(), leave=False) as bar:
        yield bar.update


def _write(path: str | None, doc: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"\nresults written to {path}")


def _client(args: argparse.Namespace) -> Any:
    from kimi_k2.eval.client import Client

    return Client(args.base_url, args.api_key, timeout_s=args.timeout, retries=args.retries)


def run_tools(args: argparse.Namespace) -> int:
    _need_http()
    from kimi_k2.eval import report
    from kimi_k2.eval.suite import load_suite
    from kimi_k2.eval.tools import Sampling, read_results, run_tools_eval

    suite = load_suite(args.suite)
    reference = read_results(args.reference) if args.reference else None
    sampling = Sampling(args.temperature, args.top_p, None if args.seed < 0 else args.seed, args.max_tokens)
    with _client(args) as client, _progress(suite.manifest()["requests"], "eval tools") as progress:
        doc = run_tools_eval(client, suite, args.model, sampling, concurrency=args.concurrency, reference=reference,
                             progress=progress)  # fmt: skip
    print(report.summary(doc))
    _write(args.output, doc)
    return 1 if doc["totals"]["answered"] == 0 else 0


def run_reproduce(args: argparse.Namespace) -> int:
    _need_http()
    from kimi_k2.eval import reproduce
    from kimi_k2.eval.suite import load_suite

    suite = load_suite(args.suite)
    with _client(args) as client, _progress(3 * len(suite.cases), "eval reproduce") as progress:
        doc = reproduce.run_reproduce(client, suite, args.model, temperature=args.temperature, seed=args.seed,
                                      concurrency=args.concurrency, progress=progress)  # fmt: skip
    print(reproduce.summary(doc))
    _write(args.output, doc)
    return 0 if not doc["differences"] and not doc["errors"] else 1


def run_compare(args: argparse.Namespace) -> int:
    from kimi_k2.eval import report
    from kimi_k2.eval.tools import read_results

    a, b = read_results(args.a), read_results(args.b)
    print(report.compare(a, b, Path(args.a).name, Path(args.b).name))
    return 0


def _endpoint_args(p: argparse.ArgumentParser, concurrency: int) -> None:
    from kimi_k2.eval.suite import DEFAULT_SUITE

    p.add_argument("--base-url", required=True, help="the OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True, help="the model name the endpoint serves")
    p.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--suite", default=str(DEFAULT_SUITE), metavar="DIR", help="suite directory (default: the shipped tools-v1)")
    p.add_argument("--concurrency", type=int, default=concurrency, help=f"requests in flight at once (default {concurrency})")
    p.add_argument("--retries", type=int, default=2, help="retries of a request after a connection error, 408/409/429 or 5xx (default 2)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request (default 120)")
    p.add_argument("--output", default=None, metavar="FILE", help="write the results (with their manifest) as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate an OpenAI-compatible K2 endpoint: tool use, reproducibility")
    eval_sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)

    t = eval_sub.add_parser("tools", help="run the tool-use suite and score every request")
    _endpoint_args(t, concurrency=4)
    t.add_argument("--reference", default=None, metavar="RESULTS.json", help="a results file whose call decisions are the truth for 'agreement'")
    t.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    t.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: not sent)")
    t.add_argument("--seed", type=int, default=0, help="seed sent with every request (default 0; negative: none sent)")
    t.add_argument("--max-tokens", type=int, default=None, help="max_tokens for every request (default: each case's)")
    t.set_defaults(func=run_tools)

    r = eval_sub.add_parser("reproduce", help="send the same seeded requests alone and in different batch company; report outputs that differ")
    _endpoint_args(r, concurrency=8)
    r.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, > 0 (default 1.0)")
    r.add_argument("--seed", type=int, default=1234, help="request i gets seed SEED + i (default 1234)")
    r.set_defaults(func=run_reproduce)

    c = eval_sub.add_parser("compare", help="two `eval tools` results files side by side")
    c.add_argument("a", metavar="A", help="results file")
    c.add_argument("b", metavar="B", help="results file")
    c.set_defaults(func=run_compare)

"""Load test of the HTTP server: N concurrent streaming clients for T seconds.

Each client loops: send a streaming `/v1/chat/completions` request (`stream_options.include_usage`), read the
SSE stream to `[DONE]`, repeat until the time is up. Measured on the client side: time to first token (request
sent → first content chunk), inter-token latency (gaps between content chunks, spread evenly over the tokens
a chunk carries when the server merged several), completed requests/s, generated tokens/s (from `usage`), and
errors (non-200 statuses, error events, broken streams — must be 0).

    python bench/serve_load.py --url http://127.0.0.1:8000 --model-name NAME --clients 8 --seconds 30
    python bench/serve_load.py --model DIR ...        # starts `kimi-k2 serve --model DIR` itself
    python bench/serve_load.py --make-tiny DIR        # writes a random-weight tiny K2 checkpoint + tokenizer

`--make-tiny` trains a BPE tokenizer on this repository's own Python sources (deterministic, offline) and saves
a random `preset("tiny")` model in HF layout: the text is noise, the serving path is the real one. Prints the
machine (CPU model, cores, torch version) with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cpu_name import cpu_name  # noqa: E402

from kimi_k2.ports import free_port  # noqa: E402

PROMPTS = [
    "Explain what a mixture-of-experts model is.",
    "Write a short poem about the sea.",
    "List three uses of a paged KV cache.",
    "What is the capital of France, and why?",
]


def machine() -> str:
    import torch

    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


@dataclass
class Results:
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    completed: int = 0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int, results: Results) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.6, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    last: float | None = None
    chunks: list[float] = []
    usage = None
    done = False
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            results.errors.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            payload = json.loads(data)
            if "error" in payload:
                results.errors.append(f"error event: {payload['error']}")
                return
            if payload.get("usage"):
                usage = payload["usage"]
            for choice in payload.get("choices", []):
                delta = choice.get("delta", {})
                if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
                    now = time.perf_counter()
                    chunks.append(now)
                    last = now
    if not done or usage is None:
        results.errors.append("stream ended without usage and [DONE]")
        return
    results.completed += 1
    results.tokens += usage["completion_tokens"]
    if chunks:
        results.ttft.append(chunks[0] - start)
        # tokens after the first, spread over the gaps between chunks
        gaps = [b - a for a, b in zip(chunks, chunks[1:])]
        extra_tokens = max(usage["completion_tokens"] - 1, len(gaps))
        if gaps and last is not None:
            per_gap = extra_tokens / len(gaps)
            results.itl.extend(gap / per_gap for gap in gaps)


async def client_loop(url: str, model: str, deadline: float, max_tokens: int, index: int, results: Results, api_key: str | None) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    transport = httpx.AsyncHTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers, transport=transport) as client:
        i = index
        while time.perf_counter() < deadline:
            try:
                await one_request(client, model, PROMPTS[i % len(PROMPTS)], max_tokens, results)
            except (httpx.HTTPError, json.JSONDecodeError) as exc:
                results.errors.append(f"{type(exc).__name__}: {exc}")
            i += 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def run_load(url: str, model: str, clients: int, seconds: float, max_tokens: int, api_key: str | None) -> tuple[Results, float]:
    results = Results()
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(client_loop(url, model, deadline, max_tokens, i, results, api_key) for i in range(clients)))
    return results, time.perf_counter() - start


def make_tiny(directory: Path) -> None:
    """A random tiny K2 checkpoint with a tokenizer trained on this repository's Python sources."""
    import torch
    from safetensors.torch import save_file

    from kimi_k2.config import preset
    from kimi_k2.model.transformer import random_model
    from kimi_k2.tokenizer.bpe_trainer import train_and_save

    directory.mkdir(parents=True, exist_ok=True)
    corpus = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "kimi_k2").rglob("*.py"))]
    train_and_save(corpus, 4096, directory)
    cfg = preset("tiny")
    cfg.vocab_size = 4096
    cfg.max_position_embeddings = 4096
    model = random_model(cfg, seed=0)
    with torch.no_grad():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2))
    print(f"wrote a random tiny K2 checkpoint with a 4096-token vocabulary to {directory}")


def wait_for(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} did not answer /health within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", help="start `kimi-k2 serve --model DIR` for the run")
    parser.add_argument("--make-tiny", type=Path, metavar="DIR", help="write a random tiny checkpoint and exit")
    parser.add_argument("--model-name", help="model name to send (default: the server's /v1/models entry)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--clients", type=int, nargs="+", default=[8], help="concurrent clients (several: one row each)")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--serve-args", default="", help="extra arguments for `kimi-k2 serve` (with --model)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    if args.make_tiny:
        make_tiny(args.make_tiny)
        return 0
    if bool(args.url) == bool(args.model):
        parser.error("give exactly one of --url (a running server) and --model (start one)")

    process = None
    url = args.url
    if args.model:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        exe = shutil.which("kimi-k2") or ""
        command = [exe] if exe else [sys.executable, "-m", "kimi_k2.cli"]
        command += ["serve", "--model", args.model, "--port", str(port), "--log-level", "warning", *args.serve_args.split()]
        process = subprocess.Popen(command)
    try:
        if process is not None:
            wait_for(url, process)
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        name = args.model_name or httpx.get(url + "/v1/models", headers=headers).json()["data"][0]["id"]
        rows = []
        for clients in args.clients:
            results, elapsed = asyncio.run(run_load(url, name, clients, args.seconds, args.max_tokens, args.api_key))
            rows.append((clients, results, elapsed))
            print(f"{clients} clients: {results.completed} requests, {results.tokens} tokens, {len(results.errors)} errors",
                  file=sys.stderr)
            for error in results.errors[:5]:
                print(f"  error: {error}", file=sys.stderr)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)

    lines = [
        f"Machine: {machine()}",
        f"Server: {url} model {name!r}; each request: chat, streaming, max_tokens {args.max_tokens}, {args.seconds:g} s per row",
        "",
        "| clients | requests/s | tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for clients, r, elapsed in rows:
        lines.append(
            f"| {clients} | {r.completed / elapsed:.2f} | {r.tokens / elapsed:.1f} | {percentile(r.ttft, 50) * 1e3:.1f} | "
            f"{percentile(r.ttft, 99) * 1e3:.1f} | {percentile(r.itl, 50) * 1e3:.1f} | {percentile(r.itl, 99) * 1e3:.1f} | "
            f"{len(r.errors)} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 1 if any(r.errors for _, r, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

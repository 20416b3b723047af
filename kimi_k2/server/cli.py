"""`kimi-k2 serve --model DIR`: the OpenAI- and Anthropic-compatible HTTP server.

Loads the checkpoint (weights, config, tokenizer, generation_config) into the engine (`LLM` + `AsyncLLM`), then
runs uvicorn. OpenAI clients use `base_url=http://HOST:PORT/v1`; Anthropic clients and Claude Code use
`base_url=http://HOST:PORT` (`ANTHROPIC_BASE_URL`). Sizes accept units: `--kv-memory 2GiB`.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

from kimi_k2.engine.cli import WEIGHT_CHOICES

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "k": 2**10, "m": 2**20, "g": 2**30}
DTYPES = ("float32", "bfloat16", "float16")


def parse_bytes(text: str) -> int:
    """`"2GiB"` -> 2147483648; plain numbers are bytes. ValueError names the accepted units."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].lower() not in _UNITS:
        raise ValueError(f"--kv-memory {text!r}: expected a size like 512MiB, 2GiB or a number of bytes")
    return int(float(match[1]) * _UNITS[match[2].lower()])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over OpenAI- and Anthropic-compatible HTTP APIs")
    p.add_argument("--model", default=None, metavar="DIR", help="checkpoint directory (HF layout + tiktoken.model; default: the built-in nano K2 demo model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' or 'x-api-key: KEY'")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait beyond the running batch; more get 429")
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: the directory name)")
    p.add_argument("--max-model-len", type=int, default=None, help="context limit in tokens (default: the model's)")
    p.add_argument("--kv-memory", type=parse_bytes, default=None, metavar="SIZE",
                   help="KV cache budget, e.g. 2GiB (default: a fifth of available memory, at most 4 GiB)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights and KV cache dtype")
    p.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                   help="auto (default): keep FP8 / INT4 checkpoints in their stored format; dequantize: convert them "
                   "to --dtype on load; fp8 / int4: quantize on load")
    p.add_argument("--int8-activations", action="store_true",
                   help="INT4 weights against activations quantized to int8 per 32 values (faster, not exact)")
    p.add_argument("--no-mmap", action="store_true",
                   help="read the weights into RAM instead of using them memory-mapped from the checkpoint files")
    p.add_argument("--max-num-seqs", type=int, default=64, help="sequences the engine batches at once")
    p.add_argument("--max-num-batched-tokens", type=int, default=512, help="tokens per engine step (prefill chunking)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-reasoning-parser", action="store_true", help="leave <think> tags in the content")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def build(args: argparse.Namespace) -> tuple[Any, Any]:
    """(the ASGI app, its AsyncLLM) for parsed `serve` arguments; the caller runs the app and shuts the engine down."""
    import torch

    from kimi_k2.config import ModelConfig
    from kimi_k2.engine.async_engine import AsyncLLM
    from kimi_k2.engine.llm import LLM
    from kimi_k2.server.app import create_app, server_state

    from kimi_k2.assets import default_model_dir

    model_dir = Path(args.model) if args.model else default_model_dir()
    if not model_dir.is_dir():
        raise FileNotFoundError(f"--model {model_dir}: no such directory")
    if not (model_dir / "tiktoken.model").is_file():
        raise FileNotFoundError(f"--model {model_dir}: no tiktoken.model (the server needs the checkpoint's tokenizer)")
    cfg = ModelConfig.from_pretrained(model_dir)
    if args.max_model_len is not None and not 1 < args.max_model_len <= cfg.max_position_embeddings:
        raise ValueError(f"--max-model-len {args.max_model_len}: must be in [2, {cfg.max_position_embeddings}] "
                         "(the model's max_position_embeddings)")
    if args.max_queue < 0:
        raise ValueError(f"--max-queue {args.max_queue}: must be >= 0")
    llm = LLM(
        model_dir,
        dtype=getattr(torch, args.dtype),
        weights=args.weights,
        mmap=not args.no_mmap,
        int8_activations=args.int8_activations,
        num_threads=args.threads,
        kv_cache_memory=args.kv_memory,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    engine = AsyncLLM(llm)
    try:
        name = args.served_model_name or model_dir.resolve().name
        state = server_state(engine, name, api_key=args.api_key, max_queue=args.max_queue,
                             reasoning=not args.no_reasoning_parser)
        return create_app(state), engine
    except BaseException:
        engine.shutdown()
        raise


def run(args: argparse.Namespace) -> int:
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app, engine = build(args)
    state = app.state.server
    print(f"serving {state.model_name!r} on http://{args.host}:{args.port} (OpenAI: /v1/chat/completions, "
          f"Anthropic: /v1/messages; context {state.max_model_len} tokens, {state.admission.capacity} requests "
          "in flight at most)", flush=True)
    try:
        # open streams get 5 s to finish on Ctrl-C; then they are cut (their engine requests are aborted)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    finally:
        engine.shutdown()
    return 0

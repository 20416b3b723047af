"""`kimi-k2 serve --model DIR`: the OpenAI- and Anthropic-compatible HTTP server.

Loads the checkpoint (weights, config, tokenizer, generation_config) into the engine (`LLM` + `AsyncLLM`), then
runs uvicorn. OpenAI clients use `base_url=http://HOST:PORT/v1`; Anthropic clients and Claude Code use
`base_url=http://HOST:PORT` (`ANTHROPIC_BASE_URL`). Sizes accept units: `--kv-memory 2GiB`.

Secure by default: the server listens on loopback; listening beyond it without an API key is refused unless
`--insecure-no-api-key` says so. The key can come from `--api-key-file` or `KIMI_K2_API_KEY` (a key on the
command line is visible to every user of the machine in `ps`). Browser pages may call the server only from the
origins `--allowed-origins` lists.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import Any

from kimi_k2.cli_options import (
    add_model_options,
    parallel_kwargs,
    parse_bytes,
    positive_int,
    read_chat_template,
    resolve_dtype,
    resolve_model,
    run_worker_rank,
    size_type,
)

__all__ = ["API_KEY_ENV", "build", "parse_bytes", "register", "run"]

API_KEY_ENV = "KIMI_K2_API_KEY"
DRAIN_S = 5.0  # on Ctrl-C, open requests get this long to finish before they are cut with an error event
log = logging.getLogger("kimi_k2")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over OpenAI- and Anthropic-compatible HTTP APIs")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; beyond loopback needs an API key or --insecure-no-api-key)")
    p.add_argument("--port", type=int, default=8000)
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None,
                     help=f"require 'Authorization: Bearer KEY' or 'x-api-key: KEY' (visible in ps: prefer "
                          f"--api-key-file or ${API_KEY_ENV})")
    key.add_argument("--api-key-file", default=None, metavar="FILE", help="read the API key from FILE (first line)")
    p.add_argument("--insecure-no-api-key", action="store_true",
                   help="allow listening beyond loopback without an API key: anyone who reaches the port can use it")
    p.add_argument("--allowed-origins", default="", metavar="ORIGINS",
                   help="comma-separated browser origins allowed to call the API (e.g. http://localhost:3000; * for "
                        "any); requests from other origins get 403")
    p.add_argument("--max-request-bytes", type=size_type("--max-request-bytes"), default="8MiB", metavar="SIZE",
                   help="largest request body (default 8MiB); larger ones get 413")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait beyond the running batch; more get 429")
    p.add_argument("--prep-processes", type=int, default=2, metavar="N",
                   help="worker processes that parse, render and tokenize requests (default 2; 0: a thread of the "
                        "server's process, no isolation from hostile bodies)")
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: the directory name)")
    p.add_argument("--max-num-seqs", type=positive_int, default=64, help="sequences the engine batches at once")
    p.add_argument("--max-num-batched-tokens", type=positive_int, default=512,
                   help="tokens per engine step (prefill chunking)")
    p.add_argument("--no-reasoning-parser", action="store_true", help="leave <think> tags in the content")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def api_key(args: argparse.Namespace, environ: dict[str, str] | None = None) -> str | None:
    """The key from --api-key, --api-key-file or $KIMI_K2_API_KEY (in that order); None when none is set."""
    environ = dict(os.environ) if environ is None else environ
    if args.api_key is not None:
        if not args.api_key.strip():
            raise ValueError("--api-key: the key is empty")
        return args.api_key
    if args.api_key_file is not None:
        path = Path(args.api_key_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--api-key-file {args.api_key_file}: no such file")
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        if not lines or not lines[0].strip():
            raise ValueError(f"--api-key-file {args.api_key_file}: the file is empty")
        return lines[0].strip()
    value = environ.get(API_KEY_ENV, "").strip()
    return value or None


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_exposure(host: str, key: str | None, insecure: bool) -> None:
    """Refuse to serve beyond loopback without a key, unless the user said so with --insecure-no-api-key."""
    if key is None and not insecure and not is_loopback(host):
        raise ValueError(
            f"--host {host} listens beyond this machine and no API key is set: anyone who can reach the port could "
            f"use the server. Set a key (--api-key-file FILE or ${API_KEY_ENV}), or pass --insecure-no-api-key to "
            "serve without one"
        )


def build(args: argparse.Namespace) -> tuple[Any, Any]:
    """(the ASGI app, its AsyncLLM) for parsed `serve` arguments; the caller runs the app and shuts the engine down."""
    import torch

    from kimi_k2.config import ModelConfig
    from kimi_k2.engine.async_engine import AsyncLLM
    from kimi_k2.engine.llm import LLM
    from kimi_k2.server.app import create_app, server_state

    key = api_key(args)
    check_exposure(args.host, key, args.insecure_no_api_key)
    model_dir = resolve_model(args.model)
    if not (model_dir / "tiktoken.model").is_file():
        raise FileNotFoundError(f"--model {model_dir}: no tiktoken.model (the server needs the checkpoint's tokenizer)")
    template = read_chat_template(args.chat_template) if args.chat_template else None
    if template is not None:
        from kimi_k2.tokenizer.chat_template import compile_chat_template

        try:
            compile_chat_template(template)
        except ValueError as exc:
            raise ValueError(f"--chat-template {args.chat_template}: {exc}") from None
    cfg = ModelConfig.from_pretrained(model_dir)
    if args.max_model_len is not None and not 1 < args.max_model_len <= cfg.max_position_embeddings:
        raise ValueError(f"--max-model-len {args.max_model_len}: must be in [2, {cfg.max_position_embeddings}] "
                         "(the model's max_position_embeddings)")
    if args.max_queue < 0:
        raise ValueError(f"--max-queue {args.max_queue}: must be >= 0")
    if args.prep_processes < 0:
        raise ValueError(f"--prep-processes {args.prep_processes}: must be >= 0")
    dtype = resolve_dtype(args, cfg)
    log.info("loading %s as %s", model_dir, dtype)
    llm = LLM(
        model_dir,
        dtype=getattr(torch, dtype),
        weights=args.weights,
        mmap=not args.no_mmap,
        int8_activations=args.int8_activations,
        num_threads=args.threads,
        kv_cache_memory=args.kv_memory,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        **parallel_kwargs(args),
    )
    if template is not None:
        llm.tokenizer.chat_template = template
    if llm.tokenizer is not None:  # now, not on the first constrained request (it would pause every stream ~1 s)
        llm.engine.grammar_compiler()
    engine = AsyncLLM(llm)
    try:
        name = args.served_model_name or (model_dir.resolve().name if args.model is None or Path(args.model).is_dir()
                                          else str(args.model))
        origins = [o.strip() for o in args.allowed_origins.split(",") if o.strip()]
        state = server_state(engine, name, api_key=key, max_queue=args.max_queue,
                             reasoning=not args.no_reasoning_parser, max_request_bytes=args.max_request_bytes,
                             allowed_origins=origins, prep_processes=args.prep_processes)
        return create_app(state), engine
    except BaseException:
        engine.shutdown()
        raise


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from kimi_k2.server.background import GracefulServer

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.api_key is not None:
        log.warning("--api-key on the command line is visible to other users in `ps`; prefer --api-key-file or $%s",
                    API_KEY_ENV)
    worker = run_worker_rank(args)  # torchrun's ranks 1..N-1 run steps, rank 0 serves
    if worker is not None:
        return worker
    app, engine = build(args)
    state = app.state.server
    print(f"serving {state.model_name!r} on http://{args.host}:{args.port} (OpenAI: /v1/chat/completions, "
          f"Anthropic: /v1/messages; context {state.max_model_len} tokens, {state.admission.capacity} requests "
          "in flight at most)", flush=True)
    try:
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
        server = GracefulServer(config, drain_s=DRAIN_S)
        engine.on_fatal = lambda exc: setattr(server, "should_exit", True)  # a rank failed: stop serving
        server.run()
    finally:
        engine.shutdown()
    if engine.fatal is not None:
        log.error("exiting: the engine failed: %s", engine.fatal)
        return 1
    return 0

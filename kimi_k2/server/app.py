"""The FastAPI application: routes of both APIs, auth, request metrics, and errors in each API's schema.

Bodies are read and validated by the endpoint code (`schemas.parse_body`), not by FastAPI's signature-driven
parsing, so malformed JSON and wrong types produce the API's own 400 body instead of FastAPI's 422. A pure-ASGI
middleware (no response buffering, so streams and disconnect detection are untouched) refuses what no endpoint
should see (`guard.py`: browser origins not allowed, a missing or wrong key, non-JSON bodies, bodies over
`--max-request-bytes`) and counts every response by endpoint and status. Any exception that is not an
`APIError` becomes a 500 in the right schema and is logged with its traceback: no input can take the server down.
A 429 says when to retry (`Retry-After`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kimi_k2.server import anthropic_api, openai_api, tokenize_api
from kimi_k2.server.auth import check_api_key
from kimi_k2.server.errors import APIError, error_body
from kimi_k2.server.guard import POST_ROUTES, check_json_content_type, check_origin, read_body, replay
from kimi_k2.server.metrics import CONTENT_TYPE
from kimi_k2.server.queue import AdmissionQueue
from kimi_k2.server.state import DEFAULT_MAX_REQUEST_BYTES, PREP_PROCESSES, AsyncEngine, ClientDisconnected, ServerState

log = logging.getLogger("kimi_k2")

ROUTES = {"/v1/models", *POST_ROUTES, "/health", "/metrics", "/tokenizer_info"}
RETRY_AFTER_S = 1  # a full queue drains as requests finish: clients should come back soon, not hammer it


class GuardAndMetricsMiddleware:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        endpoint = path if path in ROUTES else "other"
        status = 0

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            method = scope["method"]
            try:
                check_origin(headers, self.state.allowed_origins)
                if method != "OPTIONS":  # CORS preflights carry no credentials
                    check_api_key(path, headers, self.state.api_key)
                if method == "POST" and path in POST_ROUTES:
                    check_json_content_type(headers)
                    receive = replay(await read_body(receive, headers, self.state.max_request_bytes), receive)
            except APIError as exc:
                await JSONResponse(error_body(exc, path), exc.status)(scope, receive, counting_send)
                return
            await self.app(scope, receive, counting_send)
        finally:
            if endpoint != "/metrics":
                self.state.metrics.requests.inc(1, endpoint, str(status or 499))  # 499: closed before a response


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    state: ServerState = request.app.state.server
    return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    headers = None
    if exc.status == 429:
        request.app.state.server.metrics.rejected.inc()
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(error_body(exc, request.url.path), exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return JSONResponse(error_body(APIError(exc.status_code, message), request.url.path), exc.status_code, headers=exc.headers)


async def _disconnected(request: Request, exc: Exception) -> Response:
    log.info("client disconnected from %s before the reply was ready; generation aborted", request.url.path)
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    error = APIError(500, f"internal server error: {type(exc).__name__}: {exc}")
    return JSONResponse(error_body(error, request.url.path), 500)


def server_state(
    engine: AsyncEngine,
    model_name: str,
    *,
    api_key: str | None = None,
    max_queue: int = 64,
    reasoning: bool = True,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    allowed_origins: Iterable[str] = (),
    prep_processes: int = PREP_PROCESSES,
) -> ServerState:
    """State for an `AsyncLLM`: limits (context, batch size, vocabulary) and request checks come from its core."""
    if max_request_bytes < 1:
        raise ValueError(f"--max-request-bytes {max_request_bytes}: must be at least 1")
    core = engine.core  # type: ignore[attr-defined]
    tokenizer = engine.tokenizer  # type: ignore[attr-defined]
    if tokenizer is None:
        raise ValueError("the server needs a tokenizer: the model directory has no tiktoken.model")
    return ServerState(
        engine=engine,
        tokenizer=tokenizer,
        model_name=model_name,
        max_model_len=core.max_model_len,
        vocab_size=core.cfg.vocab_size,
        admission=AdmissionQueue(core.scheduler.max_num_seqs, max_queue),
        api_key=api_key,
        reasoning=reasoning,
        max_request_bytes=max_request_bytes,
        allowed_origins=frozenset(o.rstrip("/") for o in allowed_origins),
        engine_has_tokenizer=core.tokenizer is not None,
        sampling_defaults=dict(getattr(getattr(engine, "llm", None), "sampling_defaults", {})),
        prep_processes=prep_processes,
    )


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.preparer.warm()  # the preparation processes start while the server comes up
        try:
            yield
        finally:
            state.preparer.close()

    app = FastAPI(title="kimi-k2", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = state
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/v1/models", openai_api.list_models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", openai_api.completions, methods=["POST"])
    app.add_api_route("/v1/messages", anthropic_api.messages, methods=["POST"])
    app.add_api_route("/v1/messages/count_tokens", anthropic_api.count_tokens, methods=["POST"])
    app.add_api_route("/tokenizer_info", tokenize_api.tokenizer_info, methods=["GET"])  # vLLM's, for lm-eval
    app.add_api_route("/tokenize", tokenize_api.tokenize, methods=["POST"])
    app.add_api_route("/detokenize", tokenize_api.detokenize, methods=["POST"])
    handlers: dict[Any, Any] = {
        APIError: _api_error,
        HTTPException: _http_error,
        ClientDisconnected: _disconnected,
        Exception: _unexpected,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
    if state.allowed_origins:  # answers the preflights of allowed origins and marks their responses readable
        app.add_middleware(CORSMiddleware, allow_origins=sorted(state.allowed_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(GuardAndMetricsMiddleware, state=state)  # added last: outermost, so it sees every request
    return app

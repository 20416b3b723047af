"""Preparing a request — JSON validation, chat-template rendering, tokenization — in worker processes.

Why processes, not threads: the C parts of this work hold the GIL for as long as they run. pydantic validates a
JSON body of many small objects at ~5 µs per object without releasing it, so an 8 MB body of 280,000 tiny
messages held every other thread — the event loop that answers `/health` and feeds every open stream — for
2 s, in a worker thread as much as on the loop itself. In a separate process it holds only its own GIL. The
server's process sends the raw body bytes and gets back only what it needs to run the request (prompt ids,
sampling params, a few flags: small, since a runnable prompt fits the context), or the `APIError` to answer.

`RequestChecks` is everything a preparation function knows about the server (the tokenizer, the served name,
the limits, the checkpoint's sampling defaults) and is sent once to each worker when the pool starts. The pool
is started in the background when the app starts (`warm`) and closed when it stops. Workers are spawned, so
they import the main module: a script that builds and runs the app itself needs the usual
`if __name__ == "__main__":` guard. `processes=0` (`server_state(..., prep_processes=0)`) runs the same
functions in a thread of the server's process instead: no extra processes, no isolation from the GIL.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio.to_thread

from kimi_k2.engine.sampling_params import SamplingParams
from kimi_k2.engine.sequence import check_request
from kimi_k2.server.errors import APIError, bad_request

log = logging.getLogger("kimi_k2")
T = TypeVar("T")
Prepare = Callable[["RequestChecks", bytes], T]


@dataclass
class RequestChecks:
    """What preparing a request needs to know about the server; picklable (sent to the worker processes)."""

    tokenizer: Any  # kimi_k2.Tokenizer
    model_name: str
    max_model_len: int
    vocab_size: int
    sampling_defaults: dict[str, float] = field(default_factory=dict)  # generation_config.json's, by field name
    engine_has_tokenizer: bool = True
    reasoning: bool = True  # the server splits reasoning: a constrained reply may start with <think>

    def check_model(self, model: str) -> None:
        if model != self.model_name:
            raise APIError(404, f"model {model!r} not found: this server serves {self.model_name!r}", "model", "model_not_found")

    def check_lengths(
        self, num_prompt_tokens: int, max_tokens: int | None, max_tokens_field: str, prompt_field: str = "messages"
    ) -> None:
        """The prompt must leave room for one token; `max_tokens` must fit in what is left."""
        limit = self.max_model_len
        if num_prompt_tokens >= limit:
            raise bad_request(
                f"the prompt is too long: it has {num_prompt_tokens} tokens, but this model's maximum context length is "
                f"{limit} tokens (and at least one token must be left to generate)",
                prompt_field,
                "context_length_exceeded",
            )
        room = limit - num_prompt_tokens
        if max_tokens is not None and max_tokens < 1:
            raise bad_request(f"{max_tokens_field}={max_tokens}: must be at least 1", max_tokens_field)
        if max_tokens is not None and max_tokens > room:
            raise bad_request(
                f"{max_tokens_field}={max_tokens} is too large: the prompt has {num_prompt_tokens} tokens and the maximum "
                f"context length is {limit} tokens, so at most {room} tokens can be generated",
                max_tokens_field,
                "context_length_exceeded",
            )

    def check_token_ids(self, ids: list[int], where: str) -> None:
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise bad_request(f"{where}: token id {bad} is outside the vocabulary [0, {self.vocab_size})", where)

    def check_engine_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """What the engine would refuse once the stream has started, refused now as a 400."""
        try:
            check_request(prompt_ids, params, vocab_size=self.vocab_size, max_model_len=self.max_model_len,
                          has_tokenizer=self.engine_has_tokenizer)
        except ValueError as exc:
            raise bad_request(str(exc), getattr(exc, "field", None)) from None

    def sampling_default(self, name: str, value: float | None, neutral: float) -> float:
        """A request's sampling field, else the checkpoint's default (generation_config.json), else `neutral`."""
        if value is not None:
            return value
        return self.sampling_defaults.get(name, neutral)


# ---------------------------------------------------------------------------------------------- worker side
_WORKER_CHECKS: RequestChecks | None = None


def _init_worker(checks: RequestChecks) -> None:
    global _WORKER_CHECKS
    _WORKER_CHECKS = checks
    # Ctrl-C reaches the whole process group; the server shuts the workers down itself, after its drain
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_in_worker(func: Prepare[T], body: bytes) -> T:
    assert _WORKER_CHECKS is not None, "preparation worker used before its initializer ran"
    return func(_WORKER_CHECKS, body)


def _ready() -> bool:
    return _WORKER_CHECKS is not None


# ---------------------------------------------------------------------------------------------- server side
class Preparer:
    """Runs preparation functions `func(checks, body)` in `processes` worker processes (0: in a thread)."""

    def __init__(self, checks: RequestChecks, processes: int) -> None:
        if processes < 0:
            raise ValueError(f"preparation processes must be >= 0, got {processes}")
        self.checks, self.processes = checks, processes
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn, not fork: the server process runs the engine's threads, which a fork would copy mid-step
            self._executor = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker, initargs=(self.checks,))
        return self._executor

    async def run(self, func: Prepare[T], body: bytes) -> T:
        """`func(checks, body)` off this process's GIL; the `APIError` it raises propagates as is."""
        if self.processes == 0:
            return await anyio.to_thread.run_sync(func, self.checks, body)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool(), _run_in_worker, func, body)
        except BrokenProcessPool:
            log.exception("a request-preparation process died; starting new ones")
            self._executor = None
            raise APIError(500, "internal server error: the process preparing this request died") from None

    def warm(self) -> None:
        """Start the worker processes now (in the background), so the first requests do not wait for them."""
        if self.processes:
            pool = self._pool()
            for _ in range(self.processes):
                pool.submit(_ready)

    def close(self) -> None:
        """Stop the workers and wait for them (a request still being prepared takes well under a second), so
        nothing outlives the server: unjoined workers left semaphores for the resource tracker to warn about."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

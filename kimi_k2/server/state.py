"""The server's shared state and the one path every generation takes through the engine.

`ServerState` holds the engine, the tokenizer, the served model name and limits, the admission queue and the
metrics. `prepare()` runs a request's CPU work (JSON validation, template rendering, tokenization) in worker
processes (`prep.py`), so no request body, however hostile, holds the event loop that serves `/health` and every
open stream. `generate()` is the only place the HTTP layer talks to the engine: it yields the engine's deltas,
records per-token arrival times for the latency histograms, and in its `finally` aborts the engine request if
it did not finish — whatever ended the iteration (client disconnect, cancellation, an error while sending) —
so its KV blocks are freed at once. `EngineStreamingResponse` makes sure that `finally` runs promptly when a
streaming client goes away (Starlette cancels the sending task; we close the body generator under a shield).
On shutdown, `cut_streams()` aborts every running request: each stream then ends with the documented in-band
error event (a 503), instead of stopping mid-stream when the server's grace period runs out.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Send

from kimi_k2.engine.sampling_params import SamplingParams, SamplingParamsError
from kimi_k2.server.errors import APIError, bad_request
from kimi_k2.server.metrics import ServerMetrics
from kimi_k2.server.prep import Prepare, Preparer, RequestChecks
from kimi_k2.server.queue import AdmissionQueue, Slot
from kimi_k2.server.sse import SSE_HEADERS, SSE_MEDIA_TYPE

if TYPE_CHECKING:  # the preparation processes import this module: no torch at import time
    from kimi_k2.engine.core import RequestOutput

log = logging.getLogger("kimi_k2")
T = TypeVar("T")
DEFAULT_MAX_REQUEST_BYTES = 8 * 2**20  # a 256K-token conversation is at most a few MB of JSON
PREP_PROCESSES = 2  # worker processes that parse, render and tokenize requests


class AsyncEngine(Protocol):
    """What the server needs from the engine (kimi_k2.engine's `AsyncLLM`)."""

    def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]: ...

    def abort(self, request_id: str) -> Any: ...

    async def prompt_logprobs(self, prompt_ids: list[int], top: int = 0) -> list[Any]: ...

    def stats(self) -> Any: ...


@dataclass
class ServerState:
    engine: AsyncEngine
    tokenizer: Any  # kimi_k2.Tokenizer
    model_name: str
    max_model_len: int
    vocab_size: int
    admission: AdmissionQueue
    api_key: str | None = None
    reasoning: bool = True  # split <think>…</think> into reasoning_content / thinking blocks
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # larger bodies get 413
    allowed_origins: frozenset[str] = frozenset()  # browser Origins allowed to call the API ("*": any)
    engine_has_tokenizer: bool = True
    sampling_defaults: dict[str, float] = field(default_factory=dict)  # generation_config.json's, by field name
    prep_processes: int = PREP_PROCESSES  # 0: prepare requests in a thread of this process
    created: int = field(default_factory=lambda: int(time.time()))
    metrics: ServerMetrics = field(init=False)
    preparer: Preparer = field(init=False)
    shutting_down: bool = field(default=False, init=False)
    _running: set[str] = field(default_factory=set, init=False)  # request ids between engine add and finish
    _preparing: int = field(default=0, init=False)  # requests being prepared or waiting for a worker

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.live_stats, model_name=self.model_name)
        checks = RequestChecks(self.tokenizer, self.model_name, self.max_model_len, self.vocab_size,
                               dict(self.sampling_defaults), self.engine_has_tokenizer, self.reasoning)
        self.preparer = Preparer(checks, self.prep_processes)

    async def prepare(self, func: Prepare[T], body: bytes) -> T:
        """`func(checks, body)` in a preparation worker; its APIError propagates as is.

        At most `admission.capacity` requests may be in preparation or wait for it (each holds its body in
        memory): the next one gets 429 at once, like a full queue."""
        if self._preparing >= self.admission.capacity:
            raise APIError(429, f"server is at capacity: {self._preparing} requests are being parsed and tokenized "
                                "(the limit is the admission capacity); retry later", code="queue_full")
        self._preparing += 1
        try:
            return await self.preparer.run(func, body)
        finally:
            self._preparing -= 1

    def admit(self) -> Slot:
        """An admission slot (429 when full); 503 once the server is shutting down."""
        if self.shutting_down:
            raise APIError(503, "the server is shutting down: it accepts no new requests")
        return self.admission.admit()

    def cut_streams(self) -> None:
        """Shutdown: abort every running request; each one ends with a 503 error (in-band for streams)."""
        self.shutting_down = True
        for request_id in list(self._running):
            self.engine.abort(request_id)

    def live_stats(self) -> dict[str, float]:
        stats = self.engine.stats()
        return {
            "waiting": stats.num_waiting,
            "running": stats.num_running,
            "in_flight": self.admission.in_flight,
            "kv_blocks_used": stats.kv_blocks_used,
            "kv_blocks_free": stats.kv_blocks_free,
        }


SHUTDOWN_MESSAGE = "the server is shutting down: this request was stopped before it finished; retry on another server"


def final_output(last: RequestOutput | None) -> RequestOutput:
    """The last delta of a request that ran to its end; an engine-side abort is a 503."""
    if last is None or not last.finished:
        raise APIError(500, "the engine stopped producing output before the request finished")
    if last.finish_reason == "abort":
        raise APIError(503, SHUTDOWN_MESSAGE)
    return last


def make_params(**kwargs: Any) -> SamplingParams:
    """SamplingParams from request fields; its own validation errors become 400s naming the field."""
    try:
        return SamplingParams(**kwargs)
    except SamplingParamsError as exc:
        raise bad_request(str(exc).removeprefix("SamplingParams."), exc.field) from None
    except ValueError as exc:
        raise bad_request(str(exc).removeprefix("SamplingParams.")) from None


def new_request_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


async def generate(
    state: ServerState, slot: Slot, request_id: str, prompt_ids: list[int], params: SamplingParams, arrival: float
) -> AsyncIterator[tuple[RequestOutput, float]]:
    """The engine's deltas for one request, each with the time it arrived (monotonic seconds).

    Holds `slot` until the end; aborts the engine request unless it finished. Metrics are recorded here, with
    latencies measured from `arrival` (`time.monotonic()` when the HTTP handler started).
    """
    times: list[float] = []
    last: RequestOutput | None = None
    stream = state.engine.generate(request_id, prompt_ids, params)
    state._running.add(request_id)
    try:
        while True:
            try:
                out = await anext(stream)
            except StopAsyncIteration:
                break
            except ValueError as exc:  # the engine refused the request (it re-checks ids and lengths)
                raise bad_request(str(exc)) from None
            now = time.monotonic()
            times.extend([now] * len(out.token_ids))
            last = out
            yield out, now
            if out.finished:
                break
    finally:
        state._running.discard(request_id)
        with anyio.CancelScope(shield=True):
            await stream.aclose()  # type: ignore[attr-defined]
        slot.release()
        if last is None or not last.finished:
            log.info("request %s ended before the engine finished it: aborting", request_id)
            with anyio.CancelScope(shield=True):
                await _maybe_await(state.engine.abort(request_id))
        metrics = state.metrics
        metrics.observe_tokens(times, arrival)
        if last is not None:
            metrics.prompt_tokens.inc(last.num_prompt_tokens)
            metrics.cached_prompt_tokens.inc(last.num_cached_tokens)
            metrics.generation_tokens.inc(last.num_completion_tokens)
        metrics.finished.inc(1, (last.finish_reason if last is not None and last.finished else None) or "abort")


class _SharedSlot:
    """What one choice of an n-choice request holds: the request's own slot is released once, by the merge."""

    def release(self) -> None:
        pass


async def generate_choices(
    state: ServerState, slot: Slot, request_id: str, prompt_ids: list[int], params: list[SamplingParams], arrival: float
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(choice index, delta) of `len(params)` independent samples of one prompt, as they arrive.

    One choice is `generate` itself. With more, choice 0 starts first and the others once it has produced its
    first token: its prompt is then in the prefix cache, so they compute only the last partial block. Each
    choice is its own engine request (`{request_id}-{i}`), aborted if the merge ends early; `slot` is released
    when the merge ends."""
    if len(params) == 1:
        async for out, _ in generate(state, slot, request_id, prompt_ids, params[0], arrival):
            yield 0, out
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int) -> None:
        try:
            async for out, _ in generate(state, _SharedSlot(), f"{request_id}-{i}", prompt_ids, params[i], arrival):  # type: ignore[arg-type]
                queue.put_nowait((i, out, None))
        except Exception as exc:  # handed to the merge, which raises it
            queue.put_nowait((i, None, exc))
            return
        queue.put_nowait((i, None, None))

    tasks = [asyncio.ensure_future(pump(0))]
    remaining = len(params)
    try:
        while remaining:
            i, out, exc = await queue.get()
            if exc is not None:
                raise exc
            if len(tasks) == 1:  # choice 0 has its first token (or ended): its prompt blocks are cached
                tasks += [asyncio.ensure_future(pump(j)) for j in range(1, len(params))]
            if out is None:
                remaining -= 1
                continue
            yield i, out
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
        slot.release()


class EngineStreamingResponse(StreamingResponse):
    """A streaming SSE response that always closes its body generator and releases its admission slot, even when
    the client disconnected — also before the body was first iterated (closing a generator that never started
    runs none of its `finally` blocks, so the slot is released here too)."""

    def __init__(self, content: AsyncIterator[str], slot: Slot) -> None:
        super().__init__(content, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
        self.slot = slot

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()
            self.slot.release()


class ClientDisconnected(Exception):
    pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T], slot: Slot) -> T:
    """Await `work`, cancelling it if the client disconnects first (non-streaming requests); release `slot` after."""
    try:
        return await _cancel_on_disconnect(request, work)
    finally:
        slot.release()


async def _cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """The body is read already, so the next ASGI message can only be `http.disconnect`."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler itself was cancelled (shutdown): take the work down with it
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    raise ClientDisconnected()


def stream_with_errors(
    events: AsyncIterator[str], on_error: Callable[[APIError], str]
) -> AsyncIterator[str]:
    """Pass events through; an exception after the response started becomes one error event in the stream."""

    async def wrapped() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except APIError as exc:
            yield on_error(exc)
        except Exception as exc:  # the status line is sent already: report in-band and end the stream
            log.exception("error while streaming")
            yield on_error(APIError(500, f"internal error while generating: {type(exc).__name__}: {exc}"))
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()

    return wrapped()

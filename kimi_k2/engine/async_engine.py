"""AsyncLLM: the asyncio face of the engine, for the HTTP server.

Model steps block for milliseconds to seconds, so the engine runs in one background thread that owns the
`EngineCore`; the event loop never touches it. Requests and aborts travel to that thread through a queue and
are applied between steps (new requests join the running batch at the next step); each step's deltas travel
back to each request's `asyncio.Queue` with `loop.call_soon_threadsafe`. The thread sleeps when there is no
work.

    engine = AsyncLLM(LLM("ckpt/"))
    async for delta in engine.generate("req-1", prompt_ids, SamplingParams(max_tokens=64)):
        ...  # delta.token_ids, delta.text, delta.finish_reason
    engine.abort("req-1")   # from anywhere; frees the request's KV blocks before the next step
    await engine.prompt_logprobs(prompt_ids, top=1)   # teacher-forced logprobs of the prompt (echo, lm-eval)
    engine.stats()          # EngineStats: queue length, running, KV blocks used/free, prefix-cache hits
    engine.shutdown()

Leaving the `async for` early (a client disconnects, the task is cancelled) aborts the request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kimi_k2.engine.core import EngineStats, RequestOutput
from kimi_k2.engine.llm import LLM
from kimi_k2.engine.sampler import TokenLogprob
from kimi_k2.engine.sampling_params import SamplingParams
from kimi_k2.parallel.collectives import RankFailure

log = logging.getLogger("kimi_k2")


@dataclass(slots=True)
class _Sink:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]  # RequestOutput deltas, a list of TokenLogprob (scoring) or an exception

    def put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            pass


class AsyncLLM:
    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.core = llm.engine
        self.tokenizer = llm.tokenizer
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._sinks: dict[str, _Sink] = {}  # touched by the engine thread only
        self._stats = self.core.stats()
        self._stopped = False
        # A rank of a sharded model failed: every request fails, the thread ends, and `on_fatal` (the server's
        # exit) is called from the engine thread with the error, also kept as `fatal`.
        self.fatal: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None
        self._thread = threading.Thread(target=self._run, name="kimi-k2-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API
    async def generate(
        self, request_id: str, prompt: str | Sequence[int], params: SamplingParams | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Stream the deltas of one request; the last one has `finished=True` and a `finish_reason`.

        Invalid requests (unknown token ids, too long, duplicate id) raise ValueError at the first iteration."""
        if self._stopped or not self._thread.is_alive():
            raise RuntimeError("AsyncLLM is shut down (or its engine thread failed: see the log)")
        prompt_ids = self.llm.encode(prompt)
        sink = _Sink(asyncio.get_running_loop(), asyncio.Queue())
        self._commands.put(("add", request_id, prompt_ids, params or self.llm.default_sampling_params(), sink))
        if not self._thread.is_alive():  # it died between the check and the put: nobody will read the command
            self._drain_commands(RuntimeError("the engine thread is not running"))
        finished = False
        try:
            while True:
                item = await sink.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request_id)

    async def prompt_logprobs(self, prompt_ids: Sequence[int], top: int = 0) -> list[TokenLogprob]:
        """`EngineCore.prompt_logprobs` run on the engine thread between steps (never during one).

        Invalid prompts (unknown token ids, too long) raise ValueError."""
        if self._stopped or not self._thread.is_alive():
            raise RuntimeError("AsyncLLM is shut down (or its engine thread failed: see the log)")
        sink = _Sink(asyncio.get_running_loop(), asyncio.Queue())
        self._commands.put(("score", [int(t) for t in prompt_ids], top, sink))
        if not self._thread.is_alive():
            self._drain_commands(RuntimeError("the engine thread is not running"))
        item = await sink.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def abort(self, request_id: str) -> None:
        """Abort a request (thread-safe, returns at once); its stream ends with finish_reason "abort"."""
        self._commands.put(("abort", request_id))

    def stats(self) -> EngineStats:
        """Engine statistics as of the last step (queue length, running, KV blocks, prefix-cache hits)."""
        return self._stats

    def default_sampling_params(self) -> SamplingParams:
        return self.llm.default_sampling_params()

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the engine thread after the current step; running requests end with an error."""
        self._stopped = True
        self._commands.put(("stop",))
        self._thread.join(timeout)
        if self.fatal is None:
            self.llm.close()  # the worker ranks of a sharded model leave their step loop

    # ------------------------------------------------------------------ the engine thread
    def _run(self) -> None:
        """The thread's body: whatever ends it, no client is left waiting on a stream that will never finish."""
        try:
            self._serve()
        except BaseException as exc:  # a bug in the engine: fail every request loudly instead of hanging them
            log.exception("the engine thread failed")
            self._fail_all(exc)
        finally:
            self._stopped = True
            self._drain_commands(RuntimeError("the engine thread is not running"))

    def _drain_commands(self, exc: BaseException) -> None:
        """Answer every queued `add` with `exc` (the thread that would have run them is gone)."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] in ("add", "score"):
                command[-1].put(exc)

    def _serve(self) -> None:
        while True:
            block = not self.core.has_unfinished()
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                command = None
            while command is not None:
                if command[0] == "stop":
                    self._fail_all(RuntimeError("the engine was shut down"))
                    return
                self._apply(command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            if not self.core.has_unfinished():
                self._stats = self.core.stats()
                continue
            try:
                deltas = self.core.step()
            except RankFailure as exc:  # the sharded engine cannot go on: fail everything, and say so
                self.fatal = self.llm.rank_failure(exc)
                log.error("a rank of the sharded model failed: %s", self.fatal)
                self._fail_all(self.fatal)
                if self.on_fatal is not None:
                    self.on_fatal(self.fatal)
                return
            except Exception as exc:  # a failed step must not hang every client: fail and drop what ran
                log.exception("engine step failed")
                self._fail_all(exc)
                continue
            self._stats = self.core.stats()  # before delivering: a consumer that sees a delta sees these stats
            for delta in deltas:
                self._deliver(delta)

    def _apply(self, command: tuple[Any, ...]) -> None:
        if command[0] == "add":
            _, request_id, prompt_ids, params, sink = command
            try:
                self.core.add_request(request_id, prompt_ids, params)
            except Exception as exc:  # one bad request (ValueError, or torch refusing its seed) must not stop the thread
                if not isinstance(exc, ValueError):
                    log.exception("request %s could not be added", request_id)
                sink.put(exc)
                return
            self._sinks[request_id] = sink
        elif command[0] == "score":
            _, prompt_ids, top, sink = command
            try:
                sink.put(self.core.prompt_logprobs(prompt_ids, top))
            except Exception as exc:  # ValueError for a bad prompt; anything else must not kill the engine
                sink.put(exc)
        elif command[0] == "abort":
            final = self.core.abort(command[1])
            if final is not None:
                self._stats = self.core.stats()
                self._deliver(final)

    def _deliver(self, delta: RequestOutput) -> None:
        sink = self._sinks.get(delta.request_id)
        if sink is None:
            return
        if delta.finished:
            del self._sinks[delta.request_id]
        sink.put(delta)

    def _fail_all(self, exc: BaseException) -> None:
        for request_id, sink in list(self._sinks.items()):
            try:
                self.core.abort(request_id)
            except Exception:  # the core may be what failed; the client must hear about it regardless
                log.exception("abort of %s failed", request_id)
            sink.put(exc)
        self._sinks.clear()

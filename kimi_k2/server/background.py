"""Running the app under uvicorn: `GracefulServer` (shutdown that ends streams properly) and `BackgroundServer`.

`GracefulServer` is uvicorn's server with one change to its shutdown. uvicorn stops accepting connections,
waits up to `timeout_graceful_shutdown` for open responses, then cancels them: a stream cut that way just
stops, and the `openai` SDK reports a protocol error. Here open requests get `drain_s` seconds to finish; then
`ServerState.cut_streams()` aborts what still runs, so each stream ends with the documented in-band error event
(and a non-streaming request with a 503) well before uvicorn's own deadline.

`BackgroundServer` runs it inside the current process on 127.0.0.1 with a free port, in a background thread:
used by the tests (the official SDKs talk to a real HTTP server) and by `bench/serve_load.py --model` to
measure without a second process. It binds the socket itself before uvicorn starts, so the port is known and
free, and waits until the server answers before returning.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

CUT_MARGIN_S = 3.0  # after the cut, time for the error events to reach the clients before uvicorn cancels


class GracefulServer(uvicorn.Server):
    """uvicorn's server; on shutdown, requests still running after `drain_s` end with an error event."""

    def __init__(self, config: uvicorn.Config, drain_s: float) -> None:
        config.timeout_graceful_shutdown = drain_s + CUT_MARGIN_S
        super().__init__(config)
        self.drain_s = drain_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = _server_state(self.config.app)
        timer = asyncio.get_running_loop().call_later(self.drain_s, state.cut_streams) if state is not None else None
        try:
            await super().shutdown(sockets)
        finally:
            if timer is not None:
                timer.cancel()


def _server_state(app: Any) -> Any:
    """The app's `ServerState` (None for an app that is not ours)."""
    return getattr(getattr(app, "state", None), "server", None)


class BackgroundServer:
    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", log_level: str = "warning", drain_s: float = 2.0) -> None:
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it
        # a keep-alive response's body waits ~40 ms for the client's delayed ACK (Nagle).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.host, self.port = host, self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, lifespan="on")
        self._server = GracefulServer(config, drain_s)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url} within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=self._server.drain_s + CUT_MARGIN_S + 10)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

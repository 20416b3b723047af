"""A free TCP port on the loopback interface (the demo's server, the process group of spawned ranks, tests).
Standard library only, so `kimi-k2 demo` stays light."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; it may be taken again before the caller binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

"""Bounded admission: a request is admitted only while fewer than `capacity` requests are in flight.

`capacity = max_running + max_queue`: the engine runs up to `max_running` sequences at once (its batch limit)
and at most `max_queue` more may wait for a slot. The next request is refused at once (HTTP 429) instead of
piling up unbounded work and latency behind the others. Everything runs on the event loop thread, so a plain
counter is exact. `admit()` returns a `Slot` that every exit path — success, error, client disconnect,
cancellation — releases (idempotently); a streaming response holds it until its last event.
"""

from __future__ import annotations

from kimi_k2.server.errors import APIError


class AdmissionQueue:
    def __init__(self, max_running: int, max_queue: int) -> None:
        if max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running}")
        if max_queue < 0:
            raise ValueError(f"--max-queue must be >= 0, got {max_queue}")
        self.max_running, self.max_queue = max_running, max_queue
        self.in_flight = 0

    @property
    def capacity(self) -> int:
        return self.max_running + self.max_queue

    @property
    def waiting(self) -> int:
        """Admitted requests beyond the engine's running slots (an upper bound on the engine's waiting list)."""
        return max(0, self.in_flight - self.max_running)

    def admit(self) -> Slot:
        """Take a slot or raise `APIError(429)` at once. Release it with `slot.release()` or `with slot:`."""
        if self.in_flight >= self.capacity:
            raise APIError(
                429,
                f"server is at capacity: {self.in_flight} requests in flight ({self.max_running} running + "
                f"--max-queue {self.max_queue} waiting); retry later",
                code="queue_full",
            )
        self.in_flight += 1
        return Slot(self)


class Slot:
    """One admitted request; `release()` is idempotent, so every exit path may call it."""

    def __init__(self, queue: AdmissionQueue) -> None:
        self._queue: AdmissionQueue | None = queue

    def release(self) -> None:
        if self._queue is not None:
            self._queue.in_flight -= 1
            self._queue = None

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

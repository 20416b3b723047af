"""A small OpenAI-compatible HTTP client for the evaluation: JSON in, JSON out, bounded retries.

httpx, not the openai SDK: the evaluation must see exactly what the endpoint sent (an id the SDK would keep, a
field it would drop, a body that is not JSON) and decide itself what counts as a failure. Retries cover only
what a retry can fix — connection errors, timeouts, 408/409/429 and 5xx — with exponential back-off; any other
status is the endpoint's answer and is returned as is. Thread-safe (one `httpx.Client`, many threads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class Reply:
    status: int | None  # None: no HTTP answer (connection error, timeout) after every attempt
    body: Any  # parsed JSON, or the raw text when it is not JSON, or the transport error's message
    attempts: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == 200 and isinstance(self.body, dict)

    def error(self) -> str:
        """One line saying what went wrong (for a reply that is not ok)."""
        if self.status is None:
            return f"no answer after {self.attempts} attempt(s): {self.body}"
        message = self.body
        if isinstance(self.body, dict):
            err = self.body.get("error")
            message = err.get("message", err) if isinstance(err, dict) else (err or self.body)
        elif self.status == 200:
            message = f"the body is not a JSON object: {str(self.body)[:200]!r}"
        return f"HTTP {self.status}: {str(message)[:300]}"


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 120.0, retries: int = 2,
                 backoff_s: float = 0.5) -> None:  # fmt: skip
        import httpx  # lazy: the rest of the package does not need it

        if retries < 0:
            raise ValueError(f"--retries {retries}: must be >= 0")
        if timeout_s <= 0:
            raise ValueError(f"--timeout {timeout_s}: must be > 0 seconds")
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries, self.backoff_s = retries, backoff_s
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self._transport_errors = (httpx.TransportError,)

    def post(self, path: str, body: dict[str, Any]) -> Reply:
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.post(path, json=body)
            except self._transport_errors as exc:
                status, parsed = None, f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                try:
                    parsed = response.json()
                except ValueError:
                    parsed = response.text
            retryable = status is None or status in RETRY_STATUS
            if not retryable or attempt > self.retries:
                return Reply(status, parsed, attempt, time.monotonic() - start)
            time.sleep(min(8.0, self.backoff_s * 2 ** (attempt - 1)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

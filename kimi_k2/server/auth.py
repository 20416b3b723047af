"""API-key check for `--api-key`: `Authorization: Bearer KEY` (OpenAI SDK) or `x-api-key: KEY` (Anthropic SDK).

Either header may carry the key, so one server serves both SDKs with one key. The comparison is constant-time
(`hmac.compare_digest`). `/health` and `/metrics` stay open, as in other inference servers: load balancers and
Prometheus scrape them without credentials, and they reveal no request content.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from kimi_k2.server.errors import APIError

OPEN_PATHS = frozenset({"/health", "/metrics"})


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: the Bearer token, else the `x-api-key` header, else None."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def check_api_key(path: str, headers: Mapping[str, str], api_key: str | None) -> None:
    """Raise a 401 `APIError` when a key is configured and the request does not carry it."""
    if api_key is None or path in OPEN_PATHS:
        return
    key = presented_key(headers)
    if key is None:
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'", code="invalid_api_key")
    if not hmac.compare_digest(key.encode(), api_key.encode()):
        raise APIError(401, "invalid API key", code="invalid_api_key")

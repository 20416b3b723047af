"""What a request must pass before any endpoint code sees it: its origin, its key, its content type, its size.

* **Browser origins.** A browser adds `Origin` to every cross-origin request, and "simple" ones (a `text/plain`
  POST) are sent without asking the server first: without this check any web page a user visits could drive a
  keyless server on localhost. A request whose `Origin` is not in `--allowed-origins` is refused (403), whatever
  its path; same-origin is not special, since a DNS-rebound page is "same-origin" with its victim and this
  server serves no pages of its own. Clients outside browsers (the SDKs, curl) send no `Origin`.
* **Key**: `auth.check_api_key` (401), skipped for CORS preflights, which browsers send without credentials.
* **Content type.** A POST to an API route must be `application/json` (or `application/*+json`): 415 otherwise,
  a missing header included, so no form or text body a browser can send without a preflight is accepted.
* **Size.** A body larger than `--max-request-bytes` is refused with 413 as soon as that is known: from
  `Content-Length` before a byte is read, else while reading, so a huge chunked body is never buffered whole.

The body is read here (it must be, to count it) and replayed to the application; after it, `receive` is the
server's own again, so endpoints still see `http.disconnect`.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import Message, Receive

from kimi_k2.server.errors import APIError

POST_ROUTES = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/messages/count_tokens", "/tokenize", "/detokenize"}
)


def check_origin(headers: Mapping[str, str], allowed: frozenset[str]) -> None:
    """403 for a browser request from an origin not in `allowed` (`"*"` allows every origin)."""
    origin = headers.get("origin")
    if origin is None or "*" in allowed or origin.rstrip("/") in allowed:
        return
    raise APIError(403, f"cross-origin request from {origin!r} refused: a browser page may call this server only "
                        f"if it was started with --allowed-origins {origin}", code="origin_not_allowed")


def check_json_content_type(headers: Mapping[str, str]) -> None:
    """415 unless the body is declared as JSON."""
    raw = headers.get("content-type")
    media = (raw or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    got = f"got {raw!r}" if raw is not None else "the request has no Content-Type header"
    raise APIError(415, f"Content-Type must be application/json ({got})", code="unsupported_media_type")


def too_large(limit: int, size: int | None = None) -> APIError:
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return APIError(413, f"request body too large: {what}; this server accepts at most {limit} bytes "
                         "(--max-request-bytes)", code="request_too_large")


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The whole body, or a 413 `APIError` as soon as it is known to exceed `limit` bytes."""
    declared = headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise too_large(limit, int(declared))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` once, then the server's own messages (so a disconnect is still seen)."""
    sent = False

    async def replaying() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replaying

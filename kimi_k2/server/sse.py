"""Server-sent events framing (WHATWG HTML §9.2) for the two streaming APIs.

An event is optional `event: NAME` plus `data: …` lines and a blank line. JSON is serialised compactly on one
line (`ensure_ascii=False`: UTF-8 on the wire), so a payload never needs multi-line `data:` splitting.
OpenAI streams bare `data:` events ending with `data: [DONE]`; Anthropic names every event (`event:
message_start` …) and repeats the name as the payload's `type`.
"""

from __future__ import annotations

import json
from typing import Any

SSE_MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream
OPENAI_DONE = "data: [DONE]\n\n"


def dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def sse_data(payload: Any) -> str:
    """An unnamed event (OpenAI chunks)."""
    return f"data: {dumps(payload)}\n\n"


def sse_event(name: str, payload: Any) -> str:
    """A named event (Anthropic: `name` equals `payload["type"]`)."""
    return f"event: {name}\ndata: {dumps(payload)}\n\n"


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each event in a complete SSE text; used by tests and the load benchmark."""
    events: list[tuple[str | None, str]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, "\n".join(data)))
    return events

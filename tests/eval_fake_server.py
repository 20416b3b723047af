"""A deliberately broken OpenAI-compatible endpoint for the `kimi-k2 eval` tests (stdlib HTTP, one thread per
request, 127.0.0.1 on a free port).

It answers `/v1/chat/completions` by the conversation's first user message, which names the defect to show:

    good            a correct K2 call: functions.get_weather:{n} with {"city": "Genova"}
    drop-id         the call has no id                       rewrite-id     id "call_abc123" (a vendor's rewrite)
    duplicate-id    two calls sharing one id                 index-off      functions.get_weather:7
    invalid-json    arguments '{"city": "Genova"'            schema         arguments {"town": "Genova"}
    undeclared      a call to launch_rocket                  finish-stop    a call with finish_reason "stop"
    no-call         plain text, finish_reason "stop"         flaky          503 on the first try, then `good`
    bad-request     400 every time                           refuse-ids     `good`, then 400 when a tool message comes back
    random          plain text that changes on every request (for `eval reproduce`)

Anything else is `good`. `requests` counts what arrived, per defect.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


def _call(call_id: str | None, name: str, arguments: str) -> dict[str, Any]:
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        call["id"] = call_id
    return call


class FakeEndpoint:
    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._counter = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                status, reply = fake.answer(self.path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path != "/v1/chat/completions":
            return 404, {"error": {"message": f"no such endpoint {path}"}}
        messages = body["messages"]
        defect = next(m["content"] for m in messages if m["role"] == "user")
        with self._lock:
            self.requests[defect] += 1
            seen = self.requests[defect]
            self._counter += 1
            counter = self._counter
        n = sum(len(m.get("tool_calls") or []) for m in messages if m["role"] == "assistant")  # K2's next idx
        good = [_call(f"functions.get_weather:{n}", "get_weather", '{"city": "Genova"}')]
        finish = "tool_calls"
        content: str | None = None
        if messages[-1]["role"] == "tool":  # a follow-up round: answer in text
            if defect == "refuse-ids":
                return 400, {"error": {"message": f"tool_call_id {messages[-1]['tool_call_id']!r} is unknown"}}
            calls, finish, content = [], "stop", "It is sunny in Genova."
        elif defect == "bad-request":
            return 400, {"error": {"message": "this endpoint refuses everything", "param": "messages"}}
        elif defect == "flaky" and seen == 1:
            return 503, {"error": {"message": "overloaded, retry"}}
        elif defect == "drop-id":
            calls = [_call(None, "get_weather", '{"city": "Genova"}')]
        elif defect == "rewrite-id":
            calls = [_call("call_abc123", "get_weather", '{"city": "Genova"}')]
        elif defect == "duplicate-id":
            calls = [good[0], _call(good[0]["id"], "get_weather", '{"city": "Rimini"}')]
        elif defect == "index-off":
            calls = [_call("functions.get_weather:7", "get_weather", '{"city": "Genova"}')]
        elif defect == "invalid-json":
            calls = [_call(f"functions.get_weather:{n}", "get_weather", '{"city": "Genova"')]
        elif defect == "schema":
            calls = [_call(f"functions.get_weather:{n}", "get_weather", '{"town": "Genova"}')]
        elif defect == "undeclared":
            calls = [_call(f"functions.launch_rocket:{n}", "launch_rocket", '{"target": "moon"}')]
        elif defect == "finish-stop":
            calls, finish = good, "stop"
        elif defect in ("no-call", "random"):
            calls, finish, content = [], "stop", "Hello." if defect == "no-call" else f"reply number {counter}"
        else:
            calls = good
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return 200, {"id": "chatcmpl-fake", "object": "chat.completion", "model": body["model"],
                     "choices": [{"index": 0, "message": message, "finish_reason": finish}]}  # fmt: skip

    def __enter__(self) -> FakeEndpoint:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()

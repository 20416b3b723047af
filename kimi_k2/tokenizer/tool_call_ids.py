"""Tool-call ids in conversation history: show the model its own `functions.{name}:{idx}` form, always.

K2 writes ids like `functions.get_weather:0` and degrades when the history it sees carries ids a client
rewrote (`call_abc123`, `toolu_01…`): it starts breaking its tool-call format a few turns later (SPEC §6). So
before rendering, `map_tool_call_ids` rewrites every foreign id to K2's form, the same way for a call and for
the tool result that answers it, and returns the reverse map so anything sent back to that client carries
exactly the ids it sent.

Index rule: `idx` is the call's position among ALL tool calls in the conversation so far (0, 1, 2, … across
turns; parallel calls of one turn take consecutive numbers). That is the numbering K2 itself uses (a counter
over the conversation, as in Moonshot's examples and the fixes serving engines made), so the model's next call
continues at `idx = number of calls in the history`. It is also stateless: the same history always maps to
the same ids, so a server needs no memory between requests. An id already in K2 form for the same function is
kept as is; if a generated id would collide with a kept one, the next free index is taken. A tool result whose
`tool_call_id` matches no earlier call is left unchanged (there is nothing to map it to).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_K2_ID = re.compile(r"functions\.(?P<name>.+):(?P<index>\d+)")


def k2_tool_call_id(name: str, index: int) -> str:
    return f"functions.{name}:{index}"


def is_k2_tool_call_id(call_id: str, name: str | None = None) -> bool:
    """True for `functions.{name}:{digits}` (for the given function name, when one is given)."""
    match = _K2_ID.fullmatch(call_id)
    return match is not None and (name is None or match["name"] == name)


@dataclass
class ToolCallIdMap:
    """client id -> K2 id (latest use of each client id) and K2 id -> client id."""

    client_to_k2: dict[str, str] = field(default_factory=dict)
    k2_to_client: dict[str, str] = field(default_factory=dict)
    history_calls: int = 0  # tool calls in the history: the idx the model's next call should use

    def to_k2(self, client_id: str) -> str:
        return self.client_to_k2.get(client_id, client_id)

    def to_client(self, k2_id: str) -> str:
        return self.k2_to_client.get(k2_id, k2_id)


def _call_name(call: Mapping[str, Any]) -> str:
    function = call.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    return name if isinstance(name, str) else ""


def map_tool_call_ids(
    messages: Sequence[Mapping[str, Any]], *, fill_tool_names: bool = True
) -> tuple[list[dict[str, Any]], ToolCallIdMap]:
    """Copies of `messages` with K2-form tool-call ids, and the map back to the client's ids.

    `fill_tool_names`: give a tool result without a `name` the name of the function it answers, so it renders
    as `<|im_system|>get_weather<|im_middle|>` like Moonshot's examples rather than `<|im_system|>tool…`.
    """
    id_map = ToolCallIdMap()
    used: set[str] = set()
    current: dict[str, tuple[str, str]] = {}  # client id -> (K2 id, function name) for the latest call
    # Ids already in K2 form are kept; reserve them first so generated ids never collide with them.
    for message in messages:
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        for call in calls or ():
            if isinstance(call.get("id"), str) and is_k2_tool_call_id(call["id"], _call_name(call)):
                used.add(call["id"])

    out: list[dict[str, Any]] = []
    for message in messages:
        message = dict(message)
        if message.get("role") == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                call = dict(call)
                client_id, name = call.get("id"), _call_name(call)
                if isinstance(client_id, str) and is_k2_tool_call_id(client_id, name):
                    k2_id = client_id
                else:
                    k2_id = free_tool_call_id(name, id_map.history_calls, used)
                    used.add(k2_id)
                if isinstance(client_id, str):
                    current[client_id] = (k2_id, name)
                    id_map.client_to_k2[client_id] = k2_id
                    id_map.k2_to_client[k2_id] = client_id
                call["id"] = k2_id
                calls.append(call)
                id_map.history_calls += 1
            message["tool_calls"] = calls
        elif message.get("role") == "tool" and message.get("tool_call_id") in current:
            k2_id, name = current[message["tool_call_id"]]
            message["tool_call_id"] = k2_id
            if fill_tool_names and not message.get("name") and name:
                message["name"] = name
        out.append(message)
    return out, id_map


def free_tool_call_id(name: str, index: int, used: set[str]) -> str:
    """The first `functions.{name}:{i}` with i >= index that is not in `used`."""
    while (candidate := k2_tool_call_id(name, index)) in used:
        index += 1
    return candidate

"""What one chat-completion response did with tools, and what is wrong with it: pure functions, no I/O.

Per call: arguments that are not JSON (`json_errors`), arguments that are JSON but break the declared schema
(`schema_errors`, checked with `jsonschema` against the tool's `parameters`), a name no tool declares
(`undeclared`), and an id that is not the model's own (`id_errors`). K2 writes ids as `functions.{name}:{idx}`
(SPEC §6) and an endpoint must hand them to the client unchanged; a missing id, an id shared by two calls or
one that is not `functions.{the call's name}:{digits}` (a vendor's `call_…` rewrite) counts. `idx` is K2's
counter over all calls of the conversation, so a K2-form id whose idx is not the number of calls before it is
counted apart (`id_index_off`): that is the model's numbering, not the endpoint's doing. Per response: a
`finish_reason` that disagrees with the calls (`tool_calls` without calls or calls without `tool_calls`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

_K2_ID = re.compile(r"functions\.(?P<name>.+):(?P<index>\d+)")
COUNTS = ("json_errors", "schema_errors", "undeclared", "id_errors", "id_index_off", "finish_mismatch")


def _schema_errors(arguments: Any, parameters: dict[str, Any]) -> list[str]:
    from jsonschema import Draft202012Validator  # lazy: only the evaluation needs it

    validator = Draft202012Validator(parameters)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(arguments)'}: {e.message}" for e in validator.iter_errors(arguments)]


def history_call_ids(messages: list[dict[str, Any]]) -> list[str]:
    """Ids of every tool call already in the conversation (K2 numbers the next call after these)."""
    return [c.get("id", "") for m in messages if m.get("role") == "assistant" for c in m.get("tool_calls") or []]


def check_call(call: Any, position: int, tools: dict[str, dict[str, Any]], seen_ids: set[str], first_index: int) -> dict[str, Any]:
    """One entry of `message.tool_calls` → {id, name, arguments, problems: {heading: why}}."""
    problems: dict[str, str] = {}
    call = call if isinstance(call, dict) else {}
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    name = function.get("name") if isinstance(function.get("name"), str) else ""
    arguments = function.get("arguments")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        problems["id_errors"] = "no id"
    elif call_id in seen_ids:
        problems["id_errors"] = f"id {call_id!r} is already used in this conversation"
    else:
        match = _K2_ID.fullmatch(call_id)
        if match is None or match["name"] != name:
            problems["id_errors"] = f"id {call_id!r} is not the model's own (expected functions.{name}:<idx>)"
        elif int(match["index"]) != first_index + position:
            problems["id_index_off"] = f"id {call_id!r}: K2 numbers this call {first_index + position}"
    if isinstance(call_id, str) and call_id:
        seen_ids.add(call_id)
    if name not in tools:
        problems["undeclared"] = f"tool {name!r} is not declared (declared: {sorted(tools) or 'none'})"
    if isinstance(arguments, dict):  # some endpoints send an object: valid JSON by construction
        parsed: Any = arguments
        arguments = json.dumps(arguments, ensure_ascii=False)
    else:
        parsed = None
        try:
            parsed = json.loads(arguments if isinstance(arguments, str) else "")
        except json.JSONDecodeError as exc:
            problems["json_errors"] = f"arguments are not JSON: {exc}"
    if "json_errors" not in problems and name in tools:
        errors = _schema_errors(parsed, tools[name]["function"].get("parameters") or {"type": "object"})
        if errors:
            problems["schema_errors"] = "; ".join(errors)
    return {"id": call_id, "name": name, "arguments": arguments, "problems": problems}


def check_response(body: Any, declared: list[dict[str, Any]], history: list[dict[str, Any]]) -> dict[str, Any]:
    """A 200 response body of /v1/chat/completions → finish_reason, content, checked calls and the counts."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("the response has no choices[0]")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise ValueError("choices[0].message.tool_calls is not a list")
    tools = {t["function"]["name"]: t for t in declared}
    before = history_call_ids(history)
    seen = set(before)
    calls = [check_call(c, i, tools, seen, len(before)) for i, c in enumerate(raw_calls)]
    finish = choice.get("finish_reason")
    counts = Counter(heading for c in calls for heading in c["problems"])
    finish_problem = None
    if calls and finish != "tool_calls":
        finish_problem = f"{len(calls)} call(s) but finish_reason {finish!r}"
    elif not calls and finish == "tool_calls":
        finish_problem = "finish_reason 'tool_calls' without a call"
    if finish_problem:
        counts["finish_mismatch"] += 1
    return {
        "finish_reason": finish,
        "content": message.get("content"),
        "calls": calls,
        "finish_problem": finish_problem,
        "counts": {k: counts.get(k, 0) for k in COUNTS},
    }

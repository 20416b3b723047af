"""What a chat request's output may be, as an llguidance grammar (Lark) or a token mask: JSON replies, tool calls
restricted to the declared tools, tool_choice, and K2-Thinking's reasoning before the answer.

K2's tool-call markers are single special tokens, and in an llguidance grammar a special token is written by
its id (`<[163595]>`) and free text can never produce one, so a grammar decides exactly where a call can start.
The reply's grammar (one alternative per line of `start`):

    answer                                   (reasoning "off": the server does not split reasoning)
    <think> REASONING? </think> answer       ("optional": a K2-Thinking model may reason first)
    <think> REASONING? calls                 (K2-Thinking opens a call without closing </think>)
    REASONING? </think> answer | REASONING? calls     ("open": the prompt ends inside a prefilled <think>)

where `answer` is, by tool_choice: `none` → body; `auto` → body, or optional text then calls;
`required` → calls; a named function → exactly one call, to it. `body` is free text, or the JSON of `response_format`. `calls` is
`<|tool_calls_section_begin|> call+ <|tool_calls_section_end|>` (one call when parallel calls are off), a call
is `<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>ARGUMENTS<|tool_call_end|>` with NAME one
of the declared (or the named) tools and ARGUMENTS the tool's parameter schema when it is strict, else any JSON
object. The grammar ends where the engine's stop tokens (`<|im_end|>`) become the only choice.

Where no grammar is needed — free text with no tools, or `tool_choice: none` — the tool-call markers are simply
masked (`masked_token_ids`), so such requests never pay for a matcher. JSON is written with the separators of
`json.dumps` (`", "`, `": "`) and no other whitespace: the form K2 saw in training, and a bounded one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kimi_k2.server.errors import bad_request
from kimi_k2.tokenizer.special_tokens import (
    THINK_BEGIN,
    THINK_END,
    TOOL_CALL_ARGUMENT_BEGIN,
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    TOOL_CALLS_SECTION_BEGIN,
    TOOL_CALLS_SECTION_END,
)

ANY_OBJECT: dict[str, Any] = {"type": "object"}
JSON_FORMAT = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
REASONING_MODES = ("off", "optional", "open")


@dataclass(frozen=True)
class ToolSpec:
    """A declared tool as the grammar sees it: its name and the schema its arguments must follow."""

    name: str
    schema: dict[str, Any] | None = None  # None: any JSON object (a tool without strict)
    where: str = "tools"  # the request field that declared it (error messages)


@dataclass(frozen=True)
class OutputConstraint:
    """What the engine enforces for one reply: a grammar, or only a set of tokens that can never be sampled."""

    grammar: str | None = None
    masked_token_ids: tuple[int, ...] = ()


def json_grammar(schema: dict[str, Any]) -> str:
    """A `%json{…}` grammar expression for the schema, with this server's JSON formatting."""
    options = dict(JSON_FORMAT)
    if isinstance(schema.get("x-guidance"), dict):
        options.update(schema["x-guidance"])
    return "%json" + json.dumps({**schema, "x-guidance": options}, ensure_ascii=False)


def _token(tokenizer: Any, marker: str) -> str:
    return f"<[{tokenizer.token_to_id(marker)}]>"


def _calls_rules(tokenizer: Any, tools: Sequence[ToolSpec], parallel: bool) -> list[str]:
    begin, arguments, end = (_token(tokenizer, m) for m in (TOOL_CALL_BEGIN, TOOL_CALL_ARGUMENT_BEGIN, TOOL_CALL_END))
    section = f"{_token(tokenizer, TOOL_CALLS_SECTION_BEGIN)} call{'+' if parallel else ''} {_token(tokenizer, TOOL_CALLS_SECTION_END)}"
    rules = [f"calls: {section}", "call: " + " | ".join(f"call_{i}" for i in range(len(tools)))]
    for i, tool in enumerate(tools):
        schema = ANY_OBJECT if tool.schema is None else tool.schema
        rules.append(f'call_{i}: {begin} "functions.{tool.name}:" CALL_INDEX {arguments} {json_grammar(schema)} {end}')
    rules.append("CALL_INDEX: /[0-9]{1,3}/")
    return rules


def output_grammar(
    tokenizer: Any,
    *,
    body_schema: dict[str, Any] | None,
    tools: Sequence[ToolSpec],
    mode: str,
    parallel: bool,
    reasoning: str,
) -> str:
    """The Lark grammar of a reply (see the module docstring). `mode`: none | auto | required | function (then
    `tools` holds just the named one)."""
    if reasoning not in REASONING_MODES:
        raise ValueError(f"reasoning={reasoning!r}: expected one of {REASONING_MODES}")
    calls = mode != "none" and bool(tools)
    body = "body" if mode in ("none", "auto") else None
    answers = [a for a in (body, "TEXT? calls" if mode == "auto" and calls else None, "calls" if mode in ("required", "function") else None) if a]
    rules = ["answer: " + " | ".join(answers)]
    rules.append(f"body: {json_grammar(body_schema)}" if body_schema is not None else "body: TEXT?")
    think_begin, think_end = _token(tokenizer, THINK_BEGIN), _token(tokenizer, THINK_END)
    starts = {"off": ["answer"],
              "optional": ["answer", f"{think_begin} REASONING? {think_end} answer"] + ([f"{think_begin} REASONING? calls"] if calls else []),
              "open": [f"REASONING? {think_end} answer"] + (["REASONING? calls"] if calls else [])}[reasoning]
    rules.insert(0, "start: " + " | ".join(starts))
    if calls:
        rules += _calls_rules(tokenizer, tools, parallel and mode != "function")  # a named function: one call
    rules += ["TEXT: /(?s:.+)/", "REASONING: /(?s:.+)/"]
    return "\n".join(rules) + "\n"


def tool_marker_ids(tokenizer: Any) -> tuple[int, ...]:
    """The special tokens that open or make up a tool call (masked where no call may be written)."""
    markers = (TOOL_CALLS_SECTION_BEGIN, TOOL_CALLS_SECTION_END, TOOL_CALL_BEGIN, TOOL_CALL_ARGUMENT_BEGIN, TOOL_CALL_END)
    return tuple(tokenizer.token_to_id(m) for m in markers)


def output_constraint(
    tokenizer: Any,
    *,
    body_schema: dict[str, Any] | None,
    tools: Sequence[ToolSpec],
    mode: str,
    parallel: bool,
    reasoning: str,
) -> OutputConstraint:
    """The grammar when the reply needs one; else just the tool-call markers masked (no call possible)."""
    if body_schema is None and (mode == "none" or not tools):
        return OutputConstraint(masked_token_ids=tool_marker_ids(tokenizer))
    grammar = output_grammar(tokenizer, body_schema=body_schema, tools=tools, mode=mode, parallel=parallel, reasoning=reasoning)
    return OutputConstraint(grammar=grammar)


def check_schema(schema: Any, where: str) -> None:
    """400 naming `where` unless llguidance can compile the JSON schema (an unsupported keyword, a bad `$ref`)."""
    import llguidance  # no torch: the preparation processes run this

    if not isinstance(schema, dict):
        raise bad_request(f"{where}: must be a JSON Schema object, got {type(schema).__name__}", where)
    error = llguidance.LLMatcher.validate_grammar(f"start: {json_grammar(schema)}\n")
    if error:
        raise bad_request(f"{where}: this JSON schema cannot be enforced: {error}", where)

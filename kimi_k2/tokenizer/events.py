"""The events of the streaming output parsers, and the parsed form of a complete model output.

Small typed records that both server APIs can map: OpenAI (`delta.content`, `delta.reasoning_content`,
`delta.tool_calls[i]` with `index`, then `id` + `function.name`, then `function.arguments` fragments) and
Anthropic (`text` / `thinking` blocks, `tool_use` blocks with `input_json_delta`). A tool call is always
`ToolCallStart` (id and name known), zero or more `ToolCallArgsDelta`, then `ToolCallEnd` (with `error` set when
the call is malformed: invalid JSON arguments, truncated output, no arguments marker, no name). `collect_events`
folds any event stream into a `ParsedOutput`; the complete parsers are the streaming ones fed the whole text,
so streaming and non-streaming results agree by construction and by test.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int  # position of the call in this output (0, 1, ...), the OpenAI `tool_calls[i].index`
    id: str  # verbatim from the model, e.g. "functions.get_weather:0"
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArgsDelta:
    index: int
    fragment: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    index: int
    error: str | None = None  # None: a well-formed call whose arguments are valid JSON


OutputEvent = ContentDelta | ReasoningDelta | ToolCallStart | ToolCallArgsDelta | ToolCallEnd


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # the JSON text exactly as the model wrote it (surrounding whitespace removed)
    error: str | None = None

    def parsed_arguments(self) -> Any:
        """The arguments as Python data; ValueError when they are not valid JSON."""
        try:
            return json.loads(self.arguments)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tool call {self.id!r}: arguments are not valid JSON: {exc}") from exc

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ParsedOutput:
    content: str = ""
    reasoning_content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [f"{call.id or '<no id>'}: {call.error}" for call in self.tool_calls if call.error]

    def to_openai_message(self) -> dict[str, Any]:
        """An OpenAI assistant message (`content` None when empty and there are tool calls)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or (None if self.tool_calls else "")}
        if self.reasoning_content:
            message["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        return message


def collect_events(events: Iterable[OutputEvent]) -> ParsedOutput:
    """Fold a stream of events into the complete result (what a client assembles from deltas)."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, ToolCall] = {}
    for event in events:
        if isinstance(event, ContentDelta):
            content.append(event.text)
        elif isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, ToolCallStart):
            calls[event.index] = ToolCall(event.id, event.name, "")
        elif isinstance(event, ToolCallArgsDelta):
            calls[event.index].arguments += event.fragment
        elif isinstance(event, ToolCallEnd):
            calls[event.index].error = event.error
    return ParsedOutput("".join(content), "".join(reasoning), [calls[i] for i in sorted(calls)])

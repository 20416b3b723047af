"""One parser for a whole assistant output: reasoning, content and tool calls, streaming or complete.

Composition of the two parsers: `ReasoningParser` splits off `<think>…</think>`, and its content stream goes
through `ToolCallParser`. The server feeds decoded text (markers kept) chunk by chunk and maps the events to
its API; `finish()` flushes whatever was held back at the end of the stream.
"""

from __future__ import annotations

from kimi_k2.tokenizer.events import ContentDelta, OutputEvent, ParsedOutput, collect_events
from kimi_k2.tokenizer.reasoning import ReasoningParser
from kimi_k2.tokenizer.tool_calls import ToolCallParser


class OutputParser:
    """`reasoning=False` leaves `<think>` tags alone (for models that do not reason)."""

    def __init__(self, reasoning: bool = True, starts_in_reasoning: bool = False) -> None:
        self._reasoning = ReasoningParser(starts_in_reasoning) if reasoning else None
        self._tools = ToolCallParser()

    def feed(self, text: str) -> list[OutputEvent]:
        if self._reasoning is None:
            return self._tools.feed(text)
        return self._route(self._reasoning.feed(text))

    def finish(self) -> list[OutputEvent]:
        events = self._route(self._reasoning.finish()) if self._reasoning is not None else []
        return events + self._tools.finish()

    def _route(self, events: list[OutputEvent]) -> list[OutputEvent]:
        out: list[OutputEvent] = []
        for event in events:
            out.extend(self._tools.feed(event.text) if isinstance(event, ContentDelta) else [event])
        return out


def parse_output(text: str, reasoning: bool = True, starts_in_reasoning: bool = False) -> ParsedOutput:
    """Complete parse of one assistant output into reasoning_content, content and tool_calls."""
    parser = OutputParser(reasoning, starts_in_reasoning)
    return collect_events(parser.feed(text) + parser.finish())

"""Reasoning (K2-Thinking style `<think>…</think>`) split from the answer, complete and streaming.

Rules: a `<think>` block at the start of the output (after optional whitespace) is reasoning up to `</think>`;
with `starts_in_reasoning=True` (a template that pre-fills `<think>` in the prompt) the output begins inside
the reasoning. A later `<think>` opens reasoning again; a stray `</think>` is dropped, so neither tag ever
reaches `content`. Output cut inside the reasoning leaves everything in `reasoning_content`. Reasoning also ends
at a tool-call section or call marker: K2-Thinking is known to open a call without closing `</think>`, and the
call (marker included, passed on as content for the tool-call parser) must come back as a call. Other tool
markup inside the reasoning is a stray and dropped, so no marker ever reaches `reasoning_content` either. `<|im_end|>`
ends the message: anything after it is not part of this turn. Text is verbatim (no stripping) except the
whitespace before an opening `<think>`, which belongs to no one.
"""

from __future__ import annotations

from kimi_k2.tokenizer.events import ContentDelta, OutputEvent, ReasoningDelta
from kimi_k2.tokenizer.markers import MarkerScanner, Piece
from kimi_k2.tokenizer.special_tokens import (
    IM_END,
    THINK_BEGIN,
    THINK_END,
    TOOL_CALL_ARGUMENT_BEGIN,
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    TOOL_CALL_SECTION_BEGIN_SINGULAR,
    TOOL_CALL_SECTION_END_SINGULAR,
    TOOL_CALLS_SECTION_BEGIN,
    TOOL_CALLS_SECTION_END,
)

CALL_OPENERS = (TOOL_CALLS_SECTION_BEGIN, TOOL_CALL_SECTION_BEGIN_SINGULAR, TOOL_CALL_BEGIN)  # end any reasoning
# Other tool markup: dropped inside reasoning, passed on (to the tool-call parser, which drops strays) elsewhere.
CALL_MARKUP = (TOOL_CALLS_SECTION_END, TOOL_CALL_SECTION_END_SINGULAR, TOOL_CALL_ARGUMENT_BEGIN, TOOL_CALL_END)

_START, _REASONING, _CONTENT, _DONE = "start", "reasoning", "content", "done"


class ReasoningParser:
    """Feed text chunks; get `ReasoningDelta` / `ContentDelta` events. Call `finish()` at end of stream."""

    def __init__(self, starts_in_reasoning: bool = False) -> None:
        self._scanner = MarkerScanner((THINK_BEGIN, THINK_END, IM_END, *CALL_OPENERS, *CALL_MARKUP))
        self._state = _REASONING if starts_in_reasoning else _START
        self._leading_ws = ""

    def feed(self, text: str) -> list[OutputEvent]:
        return self._handle(self._scanner.feed(text))

    def finish(self) -> list[OutputEvent]:
        events = self._handle(self._scanner.finish())
        if self._state == _START and self._leading_ws:
            events.append(ContentDelta(self._leading_ws))
        self._leading_ws = ""
        self._state = _DONE
        return events

    def _handle(self, pieces: list[Piece]) -> list[OutputEvent]:
        events: list[OutputEvent] = []
        for piece in pieces:
            if self._state == _DONE:
                break
            if piece.is_marker:
                events.extend(self._on_marker(piece.text))
            else:
                events.extend(self._on_text(piece.text))
        return events

    def _on_text(self, text: str) -> list[OutputEvent]:
        if self._state == _REASONING:
            return [ReasoningDelta(text)]
        if self._state == _START:
            if not text.strip():
                self._leading_ws += text
                return []
            text, self._leading_ws, self._state = self._leading_ws + text, "", _CONTENT
        return [ContentDelta(text)]

    def _on_marker(self, marker: str) -> list[OutputEvent]:
        events: list[OutputEvent] = []
        if marker in CALL_OPENERS:  # ends reasoning; the marker itself is content for the tool-call parser
            text, self._leading_ws, self._state = self._leading_ws + marker, "", _CONTENT
            return [ContentDelta(text)]
        if marker in CALL_MARKUP:
            return [] if self._state == _REASONING else [ContentDelta(marker)]
        if marker == THINK_BEGIN and self._state != _REASONING:
            self._leading_ws = ""
            self._state = _REASONING
            return events
        if self._state == _START and self._leading_ws:  # "</think>" or "<|im_end|>" after leading whitespace
            events.append(ContentDelta(self._leading_ws))
            self._leading_ws = ""
        if marker == IM_END:
            self._state = _DONE
        elif marker == THINK_END:  # closes the reasoning; a stray one is dropped
            self._state = _CONTENT
        return events


def split_reasoning(text: str, starts_in_reasoning: bool = False) -> tuple[str, str]:
    """(reasoning_content, content) of a complete output."""
    parser = ReasoningParser(starts_in_reasoning)
    events = parser.feed(text) + parser.finish()
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    return reasoning, content

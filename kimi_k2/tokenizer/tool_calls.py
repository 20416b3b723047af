"""Tool calls in K2 output: a streaming parser (events) and the complete parse built on it.

Format (SPEC §6): content, then `<|tool_calls_section_begin|>`, then per call
`<|tool_call_begin|>functions.{name}:{idx}<|tool_call_argument_begin|>{JSON}<|tool_call_end|>`, then
`<|tool_calls_section_end|>`. The id is kept verbatim (it must round-trip into the next request); the name is
the id without a leading `functions.` and a trailing `:{digits}`, so `functions.github.create-issue:0` is
`github.create-issue` and `get_weather:1` is `get_weather`.

Failure modes handled (each has a test): section end missing (max_tokens cut: the finished calls stand); a
call without a section; the singular `<|tool_call_section_begin|>` / `_end|>`; names with dots and hyphens;
ids without `functions.`; arguments that are not valid JSON (kept verbatim, `error` set, never dropped); a
call cut off (surfaced with `error`); calls merged (a new `<|tool_call_begin|>` closes the open call); text
after the section (more content); markers split across chunks (held back by `MarkerScanner`); stray markers
in the wrong place (dropped). No marker ever reaches `content`; whitespace-only text between tool markup is
dropped; `<|im_end|>` ends the message.
"""

from __future__ import annotations

import json

from kimi_k2.tokenizer.events import (
    ContentDelta,
    OutputEvent,
    ParsedOutput,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    collect_events,
)
from kimi_k2.tokenizer.markers import MarkerScanner, Piece
from kimi_k2.tokenizer.special_tokens import (
    IM_END,
    TOOL_CALL_ARGUMENT_BEGIN,
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    TOOL_CALL_SECTION_BEGIN_SINGULAR,
    TOOL_CALL_SECTION_END_SINGULAR,
    TOOL_CALLS_SECTION_BEGIN,
    TOOL_CALLS_SECTION_END,
)

_SECTION_BEGIN = (TOOL_CALLS_SECTION_BEGIN, TOOL_CALL_SECTION_BEGIN_SINGULAR)
_SECTION_END = (TOOL_CALLS_SECTION_END, TOOL_CALL_SECTION_END_SINGULAR)
TOOL_MARKERS = (*_SECTION_BEGIN, *_SECTION_END, TOOL_CALL_BEGIN, TOOL_CALL_ARGUMENT_BEGIN, TOOL_CALL_END, IM_END)

_CONTENT, _CALL_ID, _ARGS, _DONE = "content", "call_id", "args", "done"
ERROR_NO_ARGUMENTS = f"no {TOOL_CALL_ARGUMENT_BEGIN} after the tool call id"
ERROR_TRUNCATED = "output ended inside the tool call"


def tool_name_from_id(call_id: str) -> str:
    """`functions.github.create-issue:0` -> `github.create-issue`; `get_weather:1` -> `get_weather`."""
    name = call_id.removeprefix("functions.")
    head, sep, index = name.rpartition(":")
    return head if sep and index.isdigit() else name


def _arguments_error(arguments: str) -> str | None:
    try:
        json.loads(arguments)
    except json.JSONDecodeError as exc:
        return f"arguments are not valid JSON ({exc.msg} at char {exc.pos})"
    return None


class ToolCallParser:
    """Feed text chunks (content as decoded with the markers kept); get events; call `finish()` at the end."""

    def __init__(self) -> None:
        self._scanner = MarkerScanner(TOOL_MARKERS)
        self._state = _CONTENT
        self._tool_region = False  # seen tool markup: whitespace-only text between markup is dropped
        self._segment_ws = ""  # whitespace held at the start of a text segment in the tool region
        self._segment_emitted = False
        self._index = 0  # index of the current / next call in this output
        self._call_id = ""
        self._name = ""
        self._args: list[str] = []
        self._args_ws = ""  # trailing whitespace of the arguments, released only if more text follows

    def feed(self, text: str) -> list[OutputEvent]:
        return self._handle(self._scanner.feed(text))

    def finish(self) -> list[OutputEvent]:
        events = self._handle(self._scanner.finish())
        if self._state == _CALL_ID:
            events.extend(self._close_call_without_arguments(ERROR_TRUNCATED))
        elif self._state == _ARGS:
            arguments = "".join(self._args)
            events.extend(self._end_call(f"{ERROR_TRUNCATED}; {e}" if (e := _arguments_error(arguments)) else None))
        self._state = _DONE
        return events

    # ------------------------------------------------------------------------------------------- dispatch
    def _handle(self, pieces: list[Piece]) -> list[OutputEvent]:
        events: list[OutputEvent] = []
        for piece in pieces:
            if self._state == _DONE:
                break
            if piece.is_marker:
                self._segment_ws, self._segment_emitted = "", False
                events.extend(self._on_marker(piece.text))
            elif self._state == _CONTENT:
                events.extend(self._on_content(piece.text))
            elif self._state == _CALL_ID:
                self._call_id += piece.text
            else:
                events.extend(self._on_arguments(piece.text))
        return events

    def _on_marker(self, marker: str) -> list[OutputEvent]:
        events: list[OutputEvent] = []
        if self._state == _CALL_ID and marker != TOOL_CALL_ARGUMENT_BEGIN and marker not in _SECTION_BEGIN:
            events.extend(self._close_call_without_arguments(ERROR_NO_ARGUMENTS))
        elif self._state == _ARGS and marker in (TOOL_CALL_END, TOOL_CALL_BEGIN, IM_END, *_SECTION_END):
            events.extend(self._end_call())

        if marker == IM_END:
            self._state = _DONE
        elif marker == TOOL_CALL_BEGIN:
            self._tool_region = True
            self._state, self._call_id = _CALL_ID, ""
        elif marker == TOOL_CALL_ARGUMENT_BEGIN and self._state == _CALL_ID:
            events.extend(self._start_call())
        elif marker in _SECTION_BEGIN:
            self._tool_region = True
        # Anything else is a stray marker in the wrong place: dropped, never shown as content.
        return events

    # ------------------------------------------------------------------------------------------- text
    def _on_content(self, text: str) -> list[OutputEvent]:
        if not self._tool_region or self._segment_emitted:
            return [ContentDelta(text)]
        if not text.strip():
            self._segment_ws += text
            return []
        self._segment_emitted = True
        text, self._segment_ws = self._segment_ws + text, ""
        return [ContentDelta(text)]

    def _on_arguments(self, text: str) -> list[OutputEvent]:
        if not self._args:
            text = text.lstrip()
        text = self._args_ws + text
        core = text.rstrip()
        self._args_ws = text[len(core) :]
        if not core:
            return []
        self._args.append(core)
        return [ToolCallArgsDelta(self._index, core)]

    # ------------------------------------------------------------------------------------------- calls
    def _start_call(self) -> list[OutputEvent]:
        self._call_id = self._call_id.strip()
        self._name = tool_name_from_id(self._call_id)
        self._args, self._args_ws = [], ""
        self._state = _ARGS
        return [ToolCallStart(self._index, self._call_id, self._name)]

    def _close_call_without_arguments(self, error: str) -> list[OutputEvent]:
        """A call that never reached its arguments: surfaced with `error`, or dropped if it has no id either."""
        if not self._call_id.strip():
            self._state = _CONTENT
            return []
        return self._start_call() + self._end_call(error)

    def _end_call(self, error: str | None = None) -> list[OutputEvent]:
        events: list[OutputEvent] = []
        if error is None and self._state == _ARGS and not self._args:
            # `<|tool_call_argument_begin|><|tool_call_end|>`: how models call a tool that takes no arguments.
            self._args.append("{}")
            events.append(ToolCallArgsDelta(self._index, "{}"))
        if error is None:
            error = "tool call has no function name" if not self._name else _arguments_error("".join(self._args))
        events.append(ToolCallEnd(self._index, error))
        self._index += 1
        self._state = _CONTENT
        return events


def parse_tool_calls(text: str) -> ParsedOutput:
    """Split a complete output (no reasoning) into content and tool calls."""
    parser = ToolCallParser()
    return collect_events(parser.feed(text) + parser.finish())

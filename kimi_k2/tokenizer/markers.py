"""Incremental splitting of streamed text into plain text and markup markers (`<|tool_call_begin|>`, ...).

The guarantee the parsers build on: text is released only once it cannot be the beginning of a marker. After
each feed, the longest tail of the buffer that is a proper prefix of some marker is held back (at most
len(longest marker) - 1 characters); everything else is released as text or as whole markers. No marker may
be a prefix of another, so the split of the concatenated stream does not depend on where chunks were cut.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import NamedTuple


class Piece(NamedTuple):
    text: str
    is_marker: bool


class MarkerScanner:
    def __init__(self, markers: Collection[str]) -> None:
        markers = sorted(set(markers), key=len, reverse=True)
        for a in markers:
            for b in markers:
                if a != b and b.startswith(a):
                    raise ValueError(f"marker {a!r} is a prefix of marker {b!r}")
        self._regex = re.compile("|".join(map(re.escape, markers)))
        self._prefixes = frozenset(m[:i] for m in markers for i in range(1, len(m)))
        self._longest_prefix = max(len(m) for m in markers) - 1
        self._buffer = ""

    def feed(self, text: str) -> list[Piece]:
        buffer = self._buffer + text
        pieces: list[Piece] = []
        pos = 0
        for match in self._regex.finditer(buffer):
            if match.start() > pos:
                pieces.append(Piece(buffer[pos : match.start()], False))
            pieces.append(Piece(match.group(), True))
            pos = match.end()
        tail = buffer[pos:]
        hold = 0
        for k in range(min(len(tail), self._longest_prefix), 0, -1):
            if tail[-k:] in self._prefixes:
                hold = k
                break
        if len(tail) > hold:
            pieces.append(Piece(tail[: len(tail) - hold], False))
        self._buffer = tail[len(tail) - hold :]
        return pieces

    def finish(self) -> list[Piece]:
        """Release what is held back: at the end of the stream it is plain text."""
        rest, self._buffer = self._buffer, ""
        return [Piece(rest, False)] if rest else []

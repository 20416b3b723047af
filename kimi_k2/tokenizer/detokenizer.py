"""Incremental detokenization for streaming: ids in, text out, never half a UTF-8 character.

A byte-level BPE token can end in the middle of a multi-byte character (a Chinese character or an emoji is
often split over two or three tokens). We push each token's bytes through Python's incremental UTF-8 decoder,
which holds back an incomplete tail until the next bytes arrive and replaces truly invalid bytes with U+FFFD,
so the concatenated output always equals `tokenizer.decode(all_ids)`.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable


class IncrementalDetokenizer:
    """Feed token ids as they are generated; `feed` returns the new complete text, `finish` the rest."""

    def __init__(self, token_bytes: Callable[[int], bytes], skip_ids: frozenset[int] = frozenset()) -> None:
        self._token_bytes = token_bytes
        self._skip_ids = skip_ids
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: int | Iterable[int]) -> str:
        if isinstance(ids, int):
            ids = (ids,)
        data = b"".join(self._token_bytes(i) for i in ids if i not in self._skip_ids)
        return self._decoder.decode(data)

    def finish(self) -> str:
        """Flush what is held back (an incomplete character at the very end becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)

    @property
    def pending_bytes(self) -> int:
        """Bytes held back waiting for the rest of a character."""
        return len(self._decoder.getstate()[0])

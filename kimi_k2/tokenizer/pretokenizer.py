"""K2's pre-tokenizer: the regex that splits text into BPE pieces, and the official chunking limits.

Source: SPEC §4. The pattern uses `&&` (character-class intersection): tiktoken's engine supports it, Python's
`regex` module only with the V1 flag, which is what the BPE trainer uses (tests check the two splits agree).
Before BPE the official encoder cuts text into chunks of at most 400,000 characters and then cuts any run of
more than 25,000 consecutive whitespace (or non-whitespace) characters every 25,000 characters; the pieces are
encoded independently. We reproduce that so token ids match the official tokenizer on pathological inputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

import regex

_LETTERS_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
_LETTERS_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"

K2_PATTERN = "|".join(
    [
        r"[\p{Han}]+",
        rf"[^\r\n\p{{L}}\p{{N}}]?{_LETTERS_UPPER}*{_LETTERS_LOWER}+{_CONTRACTIONS}",
        rf"[^\r\n\p{{L}}\p{{N}}]?{_LETTERS_UPPER}+{_LETTERS_LOWER}*{_CONTRACTIONS}",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

MAX_ENCODE_CHARS = 400_000
MAX_RUN_CHARS = 25_000


@lru_cache(maxsize=8)
def compile_pattern(pattern: str = K2_PATTERN) -> regex.Pattern:
    """The pre-tokenizer pattern compiled with the `regex` module in V1 mode (needed for `&&`)."""
    return regex.compile(pattern, regex.V1)


def pretokenize(text: str, pattern: str = K2_PATTERN) -> list[str]:
    """Split text into the pieces BPE is applied to (the same split tiktoken makes with this pattern)."""
    return compile_pattern(pattern).findall(text)


@lru_cache(maxsize=8)
def _long_run_re(max_run: int) -> re.Pattern:
    # `\s` of Python's `re` is exactly `str.isspace()` (tested), the class the official splitter uses.
    # The lookbehinds make a match start only where a run starts: linear time, even on long sub-limit runs.
    return re.compile(rf"(?<!\s)\s{{{max_run + 1},}}|(?<!\S)\S{{{max_run + 1},}}")


def split_long_runs(text: str, max_run: int = MAX_RUN_CHARS) -> Iterator[str]:
    """Cut every run of more than `max_run` same-class (whitespace / other) characters every `max_run` chars."""
    start = 0
    for match in _long_run_re(max_run).finditer(text):
        for cut in range(match.start() + max_run, match.end(), max_run):
            yield text[start:cut]
            start = cut
    yield text[start:]


def encoding_pieces(text: str) -> Iterator[str]:
    """The independently-encoded pieces of `text` under the official limits (one piece for ordinary text)."""
    for i in range(0, max(len(text), 1), MAX_ENCODE_CHARS):
        yield from split_long_runs(text[i : i + MAX_ENCODE_CHARS])

"""Byte-level BPE training that produces a K2-format tokenizer (`tiktoken.model` + `tokenizer_config.json`).

The real K2 vocabulary is not redistributable here, so tests and small models train their own: ranks 0..255
are the single bytes (every string is encodable), then one rank per merge, then K2's 256 special slots.
Algorithm (the classic one, made fast): split the corpus with K2's pre-tokenizer and count each distinct piece
once; run the merges over the distinct pieces only, keeping pair counts and the pieces each pair occurs in up
to date incrementally after every merge, and pick the most frequent pair from a lazy max-heap (ties go to the
smallest pair of ids, so training is deterministic). A merge's result is ranked by merge order, which is the
priority tiktoken's rank-based BPE applies when encoding.

`copy_friendly=True` trains merges that never join a letter to a non-letter and never join two digits: each
pre-tokenizer piece is cut into letter runs, single digits and runs of other characters before counting. No
learned token then spans such a boundary, so tiktoken's encoding of a whole piece is the concatenation of its
runs' encodings, and a word or number is the same tokens wherever it stands (` Paris`, `"Paris`, `(Paris`;
`423` is `4`,`2`,`3` everywhere). The format is unchanged (K2's regex, ranks, special slots); sequences get
longer (one more token per word after a space), and a small model learns to copy names and numbers verbatim
far more easily.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import regex
from tqdm import tqdm

from kimi_k2.tokenizer.pretokenizer import K2_PATTERN, compile_pattern
from kimi_k2.tokenizer.special_tokens import NUM_SPECIAL_TOKENS

Pair = tuple[int, int]
MIN_VOCAB_SIZE = 256 + NUM_SPECIAL_TOKENS


@dataclass(frozen=True)
class TrainingResult:
    ranks: dict[bytes, int]
    requested_merges: int
    distinct_pieces: int

    @property
    def merges(self) -> int:
        return len(self.ranks) - 256

    @property
    def stopped_early(self) -> bool:
        """True when no pair occurred often enough to make all the requested merges."""
        return self.merges < self.requested_merges


# A letter run, a single digit, or a run of anything else: the units `copy_friendly` training merges within.
_COPY_FRIENDLY_UNITS = regex.compile(r"\p{L}[\p{L}\p{M}]*|\p{N}|[^\p{L}\p{N}]+")


def copy_friendly_units(piece: str) -> list[str]:
    """A pre-tokenizer piece cut where merges may not cross: `' Paris'` -> `[' ', 'Paris']`, `'423'` -> digits."""
    return _COPY_FRIENDLY_UNITS.findall(piece)


def count_pieces(texts: Iterable[str], pattern: str = K2_PATTERN, *, copy_friendly: bool = False) -> Counter[str]:
    """How often each pre-tokenizer piece (or, with `copy_friendly`, each unit of a piece) occurs in the corpus."""
    compiled = compile_pattern(pattern)
    counts: Counter[str] = Counter()
    for text in texts:
        pieces = compiled.findall(text)
        if copy_friendly:
            pieces = [unit for piece in pieces for unit in copy_friendly_units(piece)]
        counts.update(pieces)
    return counts


def _pairs(word: list[int]) -> list[Pair]:
    return list(zip(word, word[1:]))


def _merge_word(word: list[int], pair: Pair, new_id: int) -> list[int]:
    a, b = pair
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_bpe(
    piece_counts: Mapping[str, int],
    num_merges: int,
    *,
    min_frequency: int = 2,
    progress: bool = False,
) -> TrainingResult:
    """Learn up to `num_merges` merges over counted pieces; returns ranks (bytes 0..255 first, then merges)."""
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    vocab: list[bytes] = [bytes([i]) for i in range(256)]
    id_of: dict[bytes, int] = {token: i for i, token in enumerate(vocab)}
    words: list[list[int]] = []
    freqs: list[int] = []
    for piece, count in piece_counts.items():
        encoded = piece.encode("utf-8")
        if len(encoded) > 1 and count > 0:
            words.append(list(encoded))
            freqs.append(count)

    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        for pair in _pairs(word):
            pair_counts[pair] += freqs[wi]
            where[pair].add(wi)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    bar = tqdm(total=num_merges, desc="bpe merges", unit="merge", disable=not progress)
    merges_done = 0
    while merges_done < num_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg_count:  # stale entry: counts only drop for existing pairs, so re-queue the true count
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        if count < min_frequency:
            break
        token = vocab[pair[0]] + vocab[pair[1]]
        new_id = id_of.get(token)
        if new_id is None:  # a new token; the same bytes can also come from another split ("a"+"bc" vs "ab"+"c")
            new_id = len(vocab)
            vocab.append(token)
            id_of[token] = new_id
            merges_done += 1
            bar.update(1)
        touched: set[Pair] = set()
        for wi in list(where[pair]):
            old = words[wi]
            new = _merge_word(old, pair, new_id)
            f = freqs[wi]
            old_pairs, new_pairs = _pairs(old), _pairs(new)
            for p in old_pairs:
                pair_counts[p] -= f
            for p in new_pairs:
                pair_counts[p] += f
                if new_id in p:
                    touched.add(p)
            old_set, new_set = set(old_pairs), set(new_pairs)
            for p in old_set - new_set:
                where[p].discard(wi)
            for p in new_set - old_set:
                where[p].add(wi)
            words[wi] = new
        pair_counts.pop(pair, None)
        where.pop(pair, None)
        for p in touched:  # pairs with the new id appeared or grew: they need a fresh heap entry
            if pair_counts.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    bar.close()
    return TrainingResult({token: i for i, token in enumerate(vocab)}, num_merges, len(words))


def train_tokenizer_ranks(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    pattern: str = K2_PATTERN,
    copy_friendly: bool = False,
    progress: bool = False,
) -> TrainingResult:
    """Train ranks for a tokenizer of `vocab_size` ids in all (BPE ranks + the 256 special slots)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 byte tokens + 256 special slots), got {vocab_size}"
        )
    counts = count_pieces(texts, pattern, copy_friendly=copy_friendly)
    return train_bpe(counts, vocab_size - MIN_VOCAB_SIZE, min_frequency=min_frequency, progress=progress)


def read_corpus(paths: Iterable[str | Path]) -> list[str]:
    """Read UTF-8 corpus files; a missing or non-UTF-8 file is an error that names it."""
    texts: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"corpus file not found: {path}")
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"corpus file {path} is not UTF-8: {exc}") from exc
    return texts


def train_and_save(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path,
    *,
    min_frequency: int = 2,
    chat_template: str | None = None,
    model_max_length: int | None = None,
    copy_friendly: bool = False,
    progress: bool = False,
) -> TrainingResult:
    """Train and write `tiktoken.model` + `tokenizer_config.json` into `out_dir`."""
    from kimi_k2.tokenizer.tokenizer import Tokenizer  # local: tokenizer imports this package's other modules

    result = train_tokenizer_ranks(
        texts, vocab_size, min_frequency=min_frequency, copy_friendly=copy_friendly, progress=progress
    )
    kwargs = {"model_max_length": model_max_length} if model_max_length is not None else {}
    Tokenizer(result.ranks, chat_template=chat_template, **kwargs).save_pretrained(out_dir)
    return result

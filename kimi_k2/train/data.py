"""Training data: text files or pre-tokenized arrays → one token stream → fixed-length packed sequences.

Inputs are (a) text files, tokenized with a K2-format tokenizer (`Tokenizer.from_pretrained(dir).encode`) and
joined with the tokenizer's EOS token after every file, or (b) pre-tokenized `.npy` arrays (any integer dtype)
or raw `.bin` arrays (uint16 as nanoGPT writes them, or uint32). Directories are searched recursively for text
files matching a glob.

The held-out split is by file: a seeded choice of `holdout_fraction` of the files (at least one) goes to
evaluation, so no evaluation document was seen in training. A single input file is split by tokens instead
(its last `holdout_fraction`).

A pre-tokenized array may come with a loss mask beside it, `NAME.mask.npy` (one 0/1 per token; 1 = the token is
a training target): tokens with mask 0 are still read as context but get the label -100, which
`F.cross_entropy` ignores. Chat data uses it to train on the assistant's replies only.

Packing: the stream is cut into non-overlapping windows of `seq_len + 1` tokens (inputs and next-token targets).
Attention runs across the EOS boundaries inside a window, as in the usual pre-training packing. Each epoch visits
the windows in a seeded random order; the batcher's position (epoch, cursor) is all that resume needs.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

log = logging.getLogger("kimi_k2")

ARRAY_SUFFIXES = (".npy", ".bin")
BIN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


class TextEncoder(Protocol):
    """What the data pipeline needs from a tokenizer (`kimi_k2.Tokenizer` is one)."""

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...


def find_files(paths: Sequence[str | Path], text_glob: str = "*.txt") -> list[Path]:
    """Expand files and directories (searched recursively with `text_glob`) into a sorted, de-duplicated list."""
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():  # loss masks travel beside their token arrays, never as data of their own
            matches = [p for p in path.rglob(text_glob) if p.is_file() and not p.name.endswith(".mask.npy")]
            if not matches:
                raise FileNotFoundError(f"data directory {path} has no files matching {text_glob!r} (see --glob)")
            found.update(matches)
        elif path.is_file():
            found.add(path)
        else:
            raise FileNotFoundError(f"data path not found: {path}")
    if not found:
        raise ValueError("no data files given")
    return sorted(found)


def is_array_file(path: Path) -> bool:
    return path.suffix in ARRAY_SUFFIXES


def load_token_array(path: Path, bin_dtype: str = "uint16") -> np.ndarray:
    """A pre-tokenized file as a 1-D int64 array (`.npy`: any integer dtype; `.bin`: raw `bin_dtype`)."""
    if path.suffix == ".npy":
        array = np.load(path, mmap_mode="r")
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{path}: expected a 1-D integer token array, found {array.dtype} of shape {array.shape}")
    else:
        if bin_dtype not in BIN_DTYPES:
            raise ValueError(f"bin dtype {bin_dtype!r}: choose one of {', '.join(BIN_DTYPES)}")
        array = np.fromfile(path, dtype=BIN_DTYPES[bin_dtype])
    if array.size and array.min() < 0:
        raise ValueError(f"{path}: token ids must be >= 0, found {int(array.min())}")
    return np.asarray(array, dtype=np.int64)


def tokenize_texts(texts: Sequence[str], tokenizer: TextEncoder, eos_id: int) -> np.ndarray:
    """Encode each document and append `eos_id` after it; one int64 stream."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.encode(text))
        ids.append(eos_id)
    return np.asarray(ids, dtype=np.int64)


def read_text(path: Path) -> tuple[str, bool]:
    """The file's text as UTF-8; invalid bytes become U+FFFD. Returns (text, had_invalid_bytes)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def split_holdout(files: Sequence[Path], holdout_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """(train, held-out) files: a seeded `holdout_fraction` of them (at least one) held out."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction={holdout_fraction} must be in (0, 1)")
    if len(files) < 2:
        raise ValueError("a split by file needs at least 2 files")
    n_eval = min(len(files) - 1, max(1, round(len(files) * holdout_fraction)))
    order = list(files)
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [f for f in files if f not in held], [f for f in files if f in held]


def load_stream(files: Sequence[Path], tokenizer: TextEncoder | None, bin_dtype: str = "uint16") -> np.ndarray:
    """Concatenate arrays or tokenized text files (mixing the two kinds is an error) into one int64 stream."""
    arrays = [f for f in files if is_array_file(f)]
    if arrays and len(arrays) != len(files):
        raise ValueError(f"mix of token arrays ({arrays[0]}) and text files: give one kind of data per run")
    if arrays:
        return np.concatenate([load_token_array(f, bin_dtype) for f in files])
    if tokenizer is None:
        raise ValueError(f"text data ({files[0]}, ...) needs a tokenizer directory (--tokenizer DIR)")
    texts, bad = [], []
    for f in files:
        text, invalid = read_text(f)
        texts.append(text)
        if invalid:
            bad.append(f)
    if bad:
        log.warning(
            "%d of %d files are not valid UTF-8; invalid bytes became U+FFFD (first: %s)", len(bad), len(files), bad[0]
        )
    return tokenize_texts(texts, tokenizer, tokenizer.eos_id)


IGNORE_LABEL = -100  # F.cross_entropy's default ignore_index


def mask_path(path: Path) -> Path:
    """Where the loss mask of a token array lives: `data.npy` → `data.mask.npy`."""
    return path.with_name(path.name.removesuffix(path.suffix) + ".mask.npy")


def load_loss_mask(files: Sequence[Path], lengths: Sequence[int]) -> np.ndarray | None:
    """The concatenated loss masks of token arrays, or None when no array has one (all must, or none)."""
    present = [mask_path(f).is_file() for f in files]
    if not any(present):
        return None
    if not all(present):
        missing = files[present.index(False)]
        raise ValueError(f"some token arrays have a loss mask and {missing} has none ({mask_path(missing).name})")
    masks = []
    for f, n in zip(files, lengths):
        mask = np.load(mask_path(f))
        if mask.ndim != 1 or len(mask) != n:
            raise ValueError(f"{mask_path(f)}: loss mask of shape {list(mask.shape)} for {n} tokens in {f.name}")
        masks.append(mask.astype(bool))
    return np.concatenate(masks)


def load_stream_and_mask(
    files: Sequence[Path], tokenizer: TextEncoder | None, bin_dtype: str = "uint16"
) -> tuple[np.ndarray, np.ndarray | None]:
    """`load_stream` plus the loss mask of token arrays that have one."""
    if files and all(is_array_file(f) for f in files):
        arrays = [load_token_array(f, bin_dtype) for f in files]
        return np.concatenate(arrays), load_loss_mask(files, [len(a) for a in arrays])
    return load_stream(files, tokenizer, bin_dtype), None


def labels(window_tokens: np.ndarray, window_mask: np.ndarray | None) -> np.ndarray:
    """Next-token labels of a `seq_len + 1` window: tokens 1.. with IGNORE_LABEL where the mask is 0."""
    targets = window_tokens[1:].astype(np.int64)
    if window_mask is not None:
        targets = np.where(window_mask[1:], targets, IGNORE_LABEL)
    return targets


@dataclass
class TokenSplits:
    train: np.ndarray  # int64 [N_train]
    eval: np.ndarray  # int64 [N_eval]
    train_files: int
    eval_files: int
    train_mask: np.ndarray | None = None  # bool [N_train]: which tokens are training targets (None: all)
    eval_mask: np.ndarray | None = None


def prepare_splits(
    paths: Sequence[str | Path],
    tokenizer: TextEncoder | None,
    *,
    eval_paths: Sequence[str | Path] | None = None,
    holdout_fraction: float = 0.05,
    seed: int = 0,
    text_glob: str = "*.txt",
    bin_dtype: str = "uint16",
) -> TokenSplits:
    """Train and held-out token streams from data paths (explicit `eval_paths`, or a held-out split by file)."""
    files = find_files(paths, text_glob)
    if eval_paths:
        eval_files = find_files(eval_paths, text_glob)
        train_files = [f for f in files if f not in set(eval_files)]
        train, train_mask = load_stream_and_mask(train_files, tokenizer, bin_dtype)
        held, eval_mask = load_stream_and_mask(eval_files, tokenizer, bin_dtype)
    elif len(files) == 1:
        train_files, eval_files = files, files
        stream, mask = load_stream_and_mask(files, tokenizer, bin_dtype)
        cut = len(stream) - max(1, math.ceil(len(stream) * holdout_fraction))
        train, held = stream[:cut], stream[cut:]
        train_mask, eval_mask = (None, None) if mask is None else (mask[:cut], mask[cut:])
    else:
        train_files, eval_files = split_holdout(files, holdout_fraction, seed)
        train, train_mask = load_stream_and_mask(train_files, tokenizer, bin_dtype)
        held, eval_mask = load_stream_and_mask(eval_files, tokenizer, bin_dtype)
    return TokenSplits(
        train=train, eval=held, train_files=len(train_files), eval_files=len(eval_files),
        train_mask=train_mask, eval_mask=eval_mask,
    )  # fmt: skip


def num_windows(tokens: int, seq_len: int) -> int:
    """How many packed `seq_len + 1` windows a stream of `tokens` holds."""
    return max(0, (tokens - 1) // seq_len)


def window(stream: np.ndarray, index: int, seq_len: int) -> np.ndarray:
    """Packed window `index`: tokens [index·S, index·S + S + 1)."""
    start = index * seq_len
    return stream[start : start + seq_len + 1]


class PackedBatches:
    """Batches of packed windows in a seeded random order per epoch; `state()` / `load_state()` for resume."""

    def __init__(
        self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int = 0, loss_mask: np.ndarray | None = None
    ) -> None:
        self.stream, self.seq_len, self.batch_size, self.seed = stream, seq_len, batch_size, seed
        self.loss_mask = loss_mask
        self.windows = num_windows(len(stream), seq_len)
        if self.windows < batch_size:
            raise ValueError(
                f"training data has {len(stream)} tokens = {self.windows} windows of seq_len+1={seq_len + 1}, "
                f"fewer than one batch of batch_size={batch_size}"
            )
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.windows)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation(self.epoch)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), int64 [B, S] each (targets IGNORE_LABEL where the loss mask is 0).

        Windows left over at an epoch's end start the next epoch."""
        if self.cursor + self.batch_size > self.windows:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        picks = self._order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return _batch(self.stream, self.loss_mask, [int(i) for i in picks], self.seq_len)


def _batch(
    stream: np.ndarray, loss_mask: np.ndarray | None, indices: Sequence[int], seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [window(stream, i, seq_len) for i in indices]
    masks = [None if loss_mask is None else window(loss_mask, i, seq_len) for i in indices]
    inputs = torch.from_numpy(np.stack([r[:-1].astype(np.int64) for r in rows]))
    targets = torch.from_numpy(np.stack([labels(r, m) for r, m in zip(rows, masks)]))
    return inputs, targets


def eval_batches(
    stream: np.ndarray, seq_len: int, batch_size: int, max_batches: int, loss_mask: np.ndarray | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `max_batches` batches of held-out windows, in order (the same every evaluation)."""
    n = min(num_windows(len(stream), seq_len), batch_size * max_batches)
    if n == 0:
        raise ValueError(f"held-out data has {len(stream)} tokens: not one window of seq_len+1={seq_len + 1}")
    out = []
    for start in range(0, n, batch_size):
        out.append(_batch(stream, loss_mask, range(start, min(n, start + batch_size)), seq_len))
    return out

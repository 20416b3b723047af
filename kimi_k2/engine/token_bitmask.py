"""Token bitmasks: one bit per vocabulary id, 32 ids per int32 word (the layout llguidance and xgrammar fill).

Bit `i % 32` of word `i // 32` is 1 when token `i` may be sampled. `apply_token_bitmask` sets the logits of
the forbidden tokens to -inf for a few rows at once: numpy's `unpackbits` of the little-endian words (bit i of
the row is byte i // 8, bit i % 8) then one add of 0 / -inf taken from a two-entry table — on K2's 163,840 ids
the cheapest of the forms measured (a shift-and-mask unpack plus `masked_fill_` costs 2-3× more, the fill
being the slow part; logits are finite or -inf, so the add never makes a NaN). `apply_token_bitmask_reference`
is the per-token loop it must agree with.

Shapes: N rows, V vocabulary, W = ceil(V / 32) words.
"""

from __future__ import annotations

import numpy as np
import torch

BITS = 32
_ADD = np.array([-np.inf, 0.0], dtype=np.float32)  # bit 0 -> -inf, bit 1 -> 0


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + BITS - 1) // BITS


def allocate_bitmask(rows: int, vocab_size: int) -> torch.Tensor:
    """An all-allowed int32 bitmask (N, W)."""
    return torch.full((rows, bitmask_words(vocab_size)), -1, dtype=torch.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> np.ndarray:
    """int32 (N, W) -> uint8 (N, min(V, W*32)): 1 where the token is allowed."""
    words = bitmask.numpy().astype("<i4", copy=False)  # little-endian: byte k of a word holds bits 8k..8k+7
    return np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")[:, :vocab_size]


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """In place: logits (N, V) float32 of forbidden tokens -> -inf. Ids past the mask's W × 32 are forbidden too."""
    n, vocab = logits.shape
    allowed = unpack_bitmask(bitmask, vocab)  # (N, min(V, W*32))
    covered = allowed.shape[1]
    logits[:, :covered] += torch.from_numpy(_ADD[allowed])
    if covered < vocab:
        logits[:, covered:] = float("-inf")


def apply_token_bitmask_reference(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """The same, one token at a time (the definition)."""
    words = bitmask.tolist()
    for r in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            word = i // BITS
            if word >= len(words[r]) or not (words[r][word] >> (i % BITS)) & 1:
                logits[r, i] = float("-inf")

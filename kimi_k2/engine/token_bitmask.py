"""Token bitmasks: one bit per vocabulary id, 32 ids per int32 word (the layout llguidance and xgrammar fill).

Bit `i % 32` of word `i // 32` is 1 when token `i` may be sampled. `apply_token_bitmask` sets the logits of
the forbidden tokens to -inf for a few rows at once (one vectorised unpack, no Python loop over the
vocabulary); `apply_token_bitmask_reference` is the per-token loop it must agree with.

Shapes: N rows, V vocabulary, W = ceil(V / 32) words.
"""

from __future__ import annotations

import torch

BITS = 32


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + BITS - 1) // BITS


def allocate_bitmask(rows: int, vocab_size: int) -> torch.Tensor:
    """An all-allowed int32 bitmask (N, W)."""
    return torch.full((rows, bitmask_words(vocab_size)), -1, dtype=torch.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 (N, W) -> bool (N, V): True where the token is allowed."""
    shifts = torch.arange(BITS, dtype=torch.int32)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (N, W, 32); >> on int32 is arithmetic, & 1 keeps one bit
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """In place: logits (N, V) of forbidden tokens -> -inf. Ids past the mask's W × 32 are forbidden too."""
    n, vocab = logits.shape
    allowed = unpack_bitmask(bitmask, vocab)  # (N, min(V, W*32))
    covered = allowed.shape[1]
    logits[:, :covered].masked_fill_(~allowed, float("-inf"))
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

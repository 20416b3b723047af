"""Paged KV blocks with reference counts and prefix caching by hash chains. Pure Python (no torch).

The pool has `num_blocks` blocks of `block_size` token slots. A full block whose latents have been computed is
registered under the hash of (previous block's hash, its token ids): equal hashes mean an equal prefix, so a new
sequence whose first k blocks hash the same shares those blocks (ref_count += 1) and skips computing them —
a repeated system prompt or conversation prefix is computed once. Freed blocks keep their hash and content in
an LRU free list until they are reused, so even a finished conversation's prefix stays cached while the pool
has room. Hash collisions are ruled out by comparing the stored token ids.

At least the last prompt token is always recomputed (the step that computes it yields the first logits), so a
fully cached prompt still reuses all but its last block. Blocks are written only by the sequence that
allocated them and only before they are full, so a shared (full) block is never written.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kimi_k2.engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


def chain_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    """Hash of a full block given its predecessor's hash (None for the first block)."""
    return hash((parent, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV pool needs at least 1 block, got num_blocks={num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size={block_size} must be >= 1")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))  # LRU order
        self._by_hash: dict[int, int] = {}
        self.prefix_cache_queries = 0  # prompt tokens looked up
        self.prefix_cache_hits = 0  # prompt tokens found

    # ------------------------------------------------------------------ sizes
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ------------------------------------------------------------------ prefix matching
    def _cached_prefix(self, seq: Sequence) -> list[tuple[int, int]]:
        """(block_id, hash) of the longest cached run of full blocks at the start of `seq`'s tokens."""
        if not self.enable_prefix_caching:
            return []
        found: list[tuple[int, int]] = []
        parent: int | None = None
        bs = self.block_size
        for i in range((seq.num_tokens - 1) // bs):  # never the block holding the last token
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = chain_hash(parent, tokens)
            block_id = self._by_hash.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            found.append((block_id, h))
            parent = h
        return found

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether all of `seq`'s tokens fit now, counting prefix-cache hits (revived free blocks cost a slot)."""
        cached = self._cached_prefix(seq)
        revived = sum(1 for block_id, _ in cached if self.blocks[block_id].ref_count == 0)
        return self.blocks_for(seq.num_tokens) - len(cached) + revived <= len(self._free)

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting sequence blocks for all its tokens, reusing cached prefix blocks; sets the
        sequence's `num_computed_tokens` (and `num_cached_tokens`) to the cached length."""
        assert not seq.block_table, f"sequence {seq.request_id!r} already holds blocks"
        if not self.can_allocate(seq):
            raise RuntimeError(f"KV pool: not enough free blocks for request {seq.request_id!r}")
        cached = self._cached_prefix(seq)
        for block_id, h in cached:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            seq.block_hashes.append(h)
        while len(seq.block_table) < self.blocks_for(seq.num_tokens):
            seq.block_table.append(self._take_free())
        cached_tokens = len(cached) * self.block_size
        self.prefix_cache_queries += seq.num_tokens
        self.prefix_cache_hits += cached_tokens
        seq.num_computed_tokens = cached_tokens
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = min(cached_tokens, seq.num_prompt_tokens)

    def _take_free(self) -> int:
        block_id, _ = self._free.popitem(last=False)  # least recently freed
        block = self.blocks[block_id]
        if block.hash is not None and self._by_hash.get(block.hash) == block_id:
            del self._by_hash[block.hash]
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block_id

    # ------------------------------------------------------------------ growth
    def slots_needed(self, seq: Sequence, num_tokens: int) -> int:
        """New blocks `seq` needs to hold `num_tokens` tokens in total."""
        return max(0, self.blocks_for(num_tokens) - len(seq.block_table))

    def grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Make room for `num_tokens` tokens in total; False (and nothing taken) if the pool is too full."""
        need = self.slots_needed(seq, num_tokens)
        if need > len(self._free):
            return False
        for _ in range(need):
            seq.block_table.append(self._take_free())
        return True

    def commit(self, seq: Sequence) -> None:
        """Register the blocks that became full of computed tokens in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        while len(seq.block_hashes) < seq.num_computed_tokens // bs:
            i = len(seq.block_hashes)
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = chain_hash(seq.block_hashes[-1] if seq.block_hashes else None, tokens)
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if block.hash is None and h not in self._by_hash:
                block.hash, block.token_ids = h, tokens
                self._by_hash[h] = block.block_id

    # ------------------------------------------------------------------ release
    def free(self, seq: Sequence) -> None:
        """Drop `seq`'s blocks at once (abort, finish, preemption). The tail blocks are queued for reuse before
        the prefix blocks, so a shared prefix outlives the tail that only this sequence used."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.num_computed_tokens = 0

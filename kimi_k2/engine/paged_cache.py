"""The paged latent KV pool and the `LatentCache` view the reference model forward runs on.

The pool is one tensor `kv [L, num_blocks × block_size, C + R]`: per layer and token slot, absorbed MLA's
normalised latent `c_kv` (C = kv_lora_rank) next to the roped shared key `k_pe` (R = qk_rope_head_dim) —
576 values per token per layer for K2. Keeping both in one row means one write and one gather per layer, and
lets the engine's attention score `[q_latent | q_pe] · [c_kv | k_pe]` in a single matmul. Slot of token i of a
sequence: `block_table[i // block_size] * block_size + i % block_size`.

The number of blocks comes from a memory budget through the planner's `kv_pool_blocks`, so the planner's
formula and the allocation agree by construction (`nbytes == num_blocks × kv_block_bytes`).

`PagedStep` implements the model's `LatentCache` protocol over a padded batch: it writes each row's new
latents into their slots and returns every row's keys gathered from its block table, with a causal mask. It is
the reference the engine's fast runner is tested against.

Legend: B batch rows, S new tokens per row, T keys per row, L layers, C kv_lora_rank, R rope dim, W = C + R.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kimi_k2.config import ModelConfig
from kimi_k2.planner.kv import kv_block_bytes, kv_bytes_per_token, kv_pool_blocks


class PagedLatentPool:
    def __init__(
        self,
        cfg: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV pool needs at least one block, got num_blocks={num_blocks}")
        self.cfg, self.num_blocks, self.block_size, self.dtype = cfg, num_blocks, block_size, dtype
        self.latent_dim = cfg.kv_lora_rank
        self.kv = torch.zeros(cfg.num_hidden_layers, num_blocks * block_size, cfg.kv_cache_width, dtype=dtype, device=device)

    @classmethod
    def from_budget(
        cls,
        cfg: ModelConfig,
        memory_budget_bytes: int,
        block_size: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> PagedLatentPool:
        """As many blocks as the planner's `kv_pool_blocks` fits in `memory_budget_bytes`."""
        dtype_bytes = torch.empty((), dtype=dtype).element_size()
        num_blocks = kv_pool_blocks(cfg, memory_budget_bytes, block_size, dtype_bytes)
        if num_blocks < 1:
            need = kv_block_bytes(cfg, block_size, dtype_bytes)
            raise ValueError(
                f"KV cache memory budget {memory_budget_bytes} bytes holds no block: one block of {block_size} "
                f"tokens needs {need} bytes"
            )
        return cls(cfg, num_blocks, block_size, dtype, device)

    @property
    def nbytes(self) -> int:
        """Bytes the pool really allocated."""
        return self.kv.numel() * self.kv.element_size()

    @property
    def bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.cfg, self.kv.element_size())


def token_slots(block_table: Sequence[int], start: int, end: int, block_size: int) -> list[int]:
    """Pool slots of tokens [start, end) of a sequence."""
    return [block_table[p // block_size] * block_size + p % block_size for p in range(start, end)]


class PagedStep:
    """`LatentCache` for one padded model forward over the pool (the reference path).

    Row b computes `lengths[b]` new tokens starting at position `starts[b]` (the rest of the row is padding);
    its keys are positions `0 .. starts[b] + lengths[b] - 1`, read through `block_tables[b]`.
    """

    def __init__(
        self,
        pool: PagedLatentPool,
        block_tables: Sequence[Sequence[int]],
        starts: Sequence[int],
        lengths: Sequence[int],
    ) -> None:
        self.pool = pool
        device = pool.kv.device
        bs = pool.block_size
        rows, s_max = len(starts), max(lengths)
        t_max = max(s + n for s, n in zip(starts, lengths))
        write = torch.full((rows, s_max), -1, dtype=torch.long)
        keys = torch.zeros((rows, t_max), dtype=torch.long)
        positions = torch.zeros((rows, s_max), dtype=torch.long)
        for b, (table, start, n) in enumerate(zip(block_tables, starts, lengths)):
            write[b, :n] = torch.tensor(token_slots(table, start, start + n, bs))
            keys[b, : start + n] = torch.tensor(token_slots(table, 0, start + n, bs))
            positions[b, :n] = torch.arange(start, start + n)
        self.positions = positions.to(device)  # (B, S) — pass to the model's forward
        self._valid = (write >= 0).to(device)
        self._write = write.to(device)
        self._keys = keys.to(device)
        key_pos = torch.arange(t_max, device=device)
        # key j is visible to row b's query at position p when j <= p (padding queries see nothing)
        self._mask = (key_pos.view(1, 1, -1) <= self.positions.unsqueeze(-1)) & self._valid.unsqueeze(-1)

    def update(self, layer_idx: int, c_kv: torch.Tensor, k_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kv = self.pool.kv[layer_idx]  # (slots, W)
        new = torch.cat([c_kv, k_pe], dim=-1).to(kv.dtype)  # (B, S, W)
        kv.index_copy_(0, self._write[self._valid], new[self._valid])
        rows, t_max = self._keys.shape
        keys = kv.index_select(0, self._keys.flatten()).view(rows, t_max, -1)  # (B, T, W)
        c = self.pool.latent_dim
        return keys[..., :c], keys[..., c:], self._mask

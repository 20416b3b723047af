"""A contiguous latent KV cache: the simplest `LatentCache`, for plain decode loops and tests.

Holds, per layer, the normalised latent `c_kv [B, max_len, C]` and the roped shared key `k_pe [B, max_len, R]`
(576 values per token per layer for K2). The engine uses a paged cache with the same interface.
"""

from __future__ import annotations

import torch

from kimi_k2.config import ModelConfig


class ContiguousLatentCache:
    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        shape = (cfg.num_hidden_layers, batch_size, max_len)
        self.c_kv = torch.zeros(*shape, cfg.kv_lora_rank, dtype=dtype, device=device)
        self.k_pe = torch.zeros(*shape, cfg.qk_rope_head_dim, dtype=dtype, device=device)
        self.max_len = max_len
        self._positions: torch.Tensor | None = None

    def prepare(self, positions: torch.Tensor) -> None:
        """Declare where this step's tokens go: positions [B, S], each < max_len."""
        if int(positions.max()) >= self.max_len:
            raise ValueError(f"position {int(positions.max())} is beyond the cache length {self.max_len}")
        self._positions = positions

    def update(self, layer_idx: int, c_kv: torch.Tensor, k_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positions = self._positions
        assert positions is not None, "call prepare(positions) before the forward"
        rows = torch.arange(positions.shape[0], device=positions.device).unsqueeze(-1)  # (B, 1)
        self.c_kv[layer_idx][rows, positions] = c_kv.to(self.c_kv.dtype)
        self.k_pe[layer_idx][rows, positions] = k_pe.to(self.k_pe.dtype)
        length = int(positions.max()) + 1
        key_pos = torch.arange(length, device=positions.device)
        mask = key_pos.view(1, 1, -1) <= positions.unsqueeze(-1)  # (B, S, T)
        return self.c_kv[layer_idx, :, :length], self.k_pe[layer_idx, :, :length], mask

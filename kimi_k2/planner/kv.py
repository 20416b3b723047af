"""KV-cache bytes with MLA: what absorbed attention caches per token, and how many paged blocks fit.

Absorbed MLA caches, per token and layer, the compressed latent `c_kv` (kv_lora_rank) and the one roped key
shared by all heads (qk_rope_head_dim): `kv_cache_width` = 576 values for K2, so 61 × 576 × 2 B = 70,272 B
per token in bf16 (35,136 in fp8), 9.2 GB for 128K tokens. Generic calculators size it as if every head had
its own K and V (`per_head_kv_bytes_per_token`: 2,498,560 B for K2, 35.6× more); that is the cache only the
naive (expanded) path would need.

The engine sizes its paged KV pool with `kv_pool_blocks`, so the planner and the engine agree by
construction.
"""

from __future__ import annotations

from kimi_k2.config import ModelConfig

KV_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1}


def kv_dtype_bytes(name: str) -> int:
    """Bytes per cached value for a `--kv-dtype` name."""
    try:
        return KV_DTYPE_BYTES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown KV cache dtype {name!r}; known: {', '.join(KV_DTYPE_BYTES)}") from None


def kv_bytes_per_token(cfg: ModelConfig, dtype_bytes: int = 2, *, num_layers: int | None = None) -> int:
    """Latent cache bytes one token occupies: layers × kv_cache_width × dtype_bytes (all layers by default)."""
    layers = cfg.num_hidden_layers if num_layers is None else num_layers
    return layers * cfg.kv_cache_width * dtype_bytes


def per_head_kv_bytes_per_token(cfg: ModelConfig, dtype_bytes: int = 2) -> int:
    """What a per-head K/V cache would take (layers × heads × (qk_head_dim + v_head_dim)), for comparison."""
    return cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * dtype_bytes


def kv_bytes(cfg: ModelConfig, context: int, batch: int = 1, dtype_bytes: int = 2) -> int:
    """Cache for `batch` concurrent sequences of `context` tokens each."""
    if context < 0 or batch < 0:
        raise ValueError(f"context={context} and batch={batch} must be >= 0")
    return context * batch * kv_bytes_per_token(cfg, dtype_bytes)


def kv_block_bytes(cfg: ModelConfig, block_size: int, dtype_bytes: int = 2) -> int:
    """One paged block: `block_size` tokens of every layer's latent cache."""
    if block_size <= 0:
        raise ValueError(f"block_size={block_size} must be a positive number of tokens")
    return block_size * kv_bytes_per_token(cfg, dtype_bytes)


def kv_pool_blocks(cfg: ModelConfig, memory_budget_bytes: int, block_size: int, dtype_bytes: int = 2) -> int:
    """How many paged KV blocks of `block_size` tokens fit in `memory_budget_bytes` (0 if the budget is negative)."""
    return max(0, int(memory_budget_bytes) // kv_block_bytes(cfg, block_size, dtype_bytes))

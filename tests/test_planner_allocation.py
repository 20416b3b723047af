"""The planner's byte counts are the ones the real objects allocate (within 2%, the issue's bound)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import kimi_k2
from kimi_k2.config import preset
from kimi_k2.model import random_model
from kimi_k2.planner.formats import weight_bytes


def allocated_bytes(model: torch.nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("dtype, fmt", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
@pytest.mark.parametrize("name", ["tiny", "plain_q_two_dense"])
def test_weight_bytes_match_load_model(tmp_path, name, dtype, fmt):
    cfg = preset("tiny")
    if name == "plain_q_two_dense":
        cfg = cfg.replace(q_lora_rank=None, first_k_dense_replace=2, num_hidden_layers=4, vocab_size=1000)
    model = random_model(cfg, seed=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(__import__("json").dumps(cfg.to_hf()))
    loaded = kimi_k2.load_model(tmp_path, dtype=dtype)
    planned = weight_bytes(cfg, fmt)
    assert abs(allocated_bytes(loaded) - planned) <= 0.02 * planned


@pytest.mark.parametrize("dtype, dtype_bytes", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_kv_bytes_match_the_engine_pool(dtype, dtype_bytes):
    """The tensor the engine really allocates for its KV pool holds exactly the planner's bytes per token."""
    from kimi_k2 import LLM
    from kimi_k2.planner.kv import kv_bytes, kv_bytes_per_token, kv_pool_blocks

    cfg = preset("tiny")
    budget = 3 * 2**20
    llm = LLM(random_model(cfg, seed=0).to(dtype), kv_cache_memory=budget, block_size=16)
    pool = llm.engine.pool
    allocated = pool.kv.numel() * pool.kv.element_size()  # the real tensor, not the pool's own bookkeeping
    tokens = pool.num_blocks * 16
    assert pool.num_blocks == kv_pool_blocks(cfg, budget, 16, dtype_bytes)
    assert abs(allocated - kv_bytes(cfg, tokens, 1, dtype_bytes)) <= 0.02 * allocated
    assert llm.stats().kv_bytes_per_token == kv_bytes_per_token(cfg, dtype_bytes)
    assert allocated <= budget

"""Which part of each checkpoint tensor a rank holds: a pure function of the tensor's name, the model's config
and the `ParallelConfig`.

Tensor parallel (vLLM's and DeepSeek's layout):
* column-split (dim 0, by heads): `q_proj` / `q_b_proj` (H·(Q+R) rows), `kv_b_proj` (H·(Q+V) rows);
* row-split (dim 1, by heads): `o_proj` (H·V inputs): its partial sums need one all-reduce;
* dense MLP and shared expert: `gate_proj` / `up_proj` column-split, `down_proj` row-split;
* routed experts: the same as the dense MLP without expert parallelism; with it, whole experts on their owner
  rank and nothing elsewhere;
* vocabulary-split (dim 0): `embed_tokens` and `lm_head`, ceil(V/N) rows a rank (the last may have fewer);
* replicated: `q_a_proj`, `kv_a_proj_with_mqa` (MLA's down-projections: the latent is one per token, not per
  head), every norm, the router and its correction bias.

Legend: H heads, Q qk_nope_head_dim, R qk_rope_head_dim, V v_head_dim.
"""

from __future__ import annotations

import re

from kimi_k2.config import ModelConfig
from kimi_k2.kernels.weight import WHOLE, Shard
from kimi_k2.parallel.config import ParallelConfig

__all__ = ["WHOLE", "Shard", "shard_of"]


_EXPERT = re.compile(r"model\.layers\.\d+\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_MLP = re.compile(r"model\.layers\.\d+\.mlp(\.shared_experts)?\.(gate_proj|up_proj|down_proj)\.weight$")
_HEADS = re.compile(r"model\.layers\.\d+\.self_attn\.(q_proj|q_b_proj|kv_b_proj|o_proj)\.weight$")


def _by_heads(pc: ParallelConfig, heads: int, width: int, dim: int) -> Shard:
    h0, h1 = pc.part(heads)
    return Shard(dim, h0 * width, h1 * width)


def _swiglu(pc: ParallelConfig, projection: str, inter: int) -> Shard:
    start, stop = pc.part(inter)
    return Shard(1 if projection == "down_proj" else 0, start, stop)


def shard_of(name: str, cfg: ModelConfig, pc: ParallelConfig) -> Shard | None:
    """The part of parameter `name` (a state_dict key, e.g. `model.layers.3.self_attn.o_proj.weight`) that this
    rank holds, or None when it holds none of it (another rank's routed expert)."""
    if not pc.is_parallel:
        return WHOLE
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return Shard(0, *pc.vocab_part(cfg.vocab_size))
    if m := _EXPERT.match(name):
        if pc.expert_parallel:
            return WHOLE if int(m.group(1)) in pc.experts(cfg) else None
        return _swiglu(pc, m.group(2), cfg.moe_intermediate_size)
    if m := _MLP.match(name):
        shared = m.group(1) is not None
        inter = cfg.moe_intermediate_size * cfg.n_shared_experts if shared else cfg.intermediate_size
        return _swiglu(pc, m.group(2), inter)
    if m := _HEADS.match(name):
        heads = cfg.num_attention_heads
        projection = m.group(1)
        if projection == "o_proj":
            return _by_heads(pc, heads, cfg.v_head_dim, 1)
        width = cfg.qk_head_dim if projection != "kv_b_proj" else cfg.qk_nope_head_dim + cfg.v_head_dim
        return _by_heads(pc, heads, width, 0)
    return WHOLE

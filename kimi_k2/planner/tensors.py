"""The checkpoint's tensors as shapes: the inventory every byte count in the planner is summed over.

One `TensorSpec` per checkpoint tensor name (routed experts of a layer are one spec with `count = E`), in the
HF layout of SPEC §3. Each spec carries what the formats and the parallel splits need to know about it:
its kind (a quantizable Linear, the router, an embedding, a norm, the fp32 bias), the `ParamCounts`
component it belongs to, and whether tensor parallelism shards or replicates it (vLLM's layout: the MLA
down-projections `q_a_proj` / `kv_a_proj_with_mqa`, norms and the router are replicated on every rank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kimi_k2.config import ModelConfig

# Layer index of the tensors before the first layer (embedding) and after the last (final norm, lm_head):
# the pipeline split puts them on the first and last stage.
PRE_LAYERS = -1


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str  # checkpoint name; "*" stands for the expert index when count > 1
    shape: tuple[int, ...]  # (out, in) for a Linear, as stored
    kind: str  # "linear" | "router" | "embedding" | "lm_head" | "vector" (norms, biases) | "score_bias" (fp32)
    component: str  # a ParamCounts field
    layer: int  # PRE_LAYERS, 0 .. num_hidden_layers-1, or num_hidden_layers (final norm, lm_head)
    tp_sharded: bool  # tensor parallelism splits it across ranks (else every rank holds a copy)
    count: int = 1  # identical tensors this spec stands for

    @property
    def numel(self) -> int:
        """Elements of one of the `count` tensors."""
        return math.prod(self.shape)


def _linear(name: str, out: int, inp: int, component: str, layer: int, *, sharded: bool = True, count: int = 1) -> TensorSpec:
    return TensorSpec(name, (out, inp), "linear", component, layer, sharded, count)


def _norm(name: str, width: int, layer: int) -> TensorSpec:
    return TensorSpec(name, (width,), "vector", "norms", layer, False)


def _swiglu(prefix: str, hidden: int, inter: int, component: str, layer: int, count: int = 1) -> list[TensorSpec]:
    return [
        _linear(f"{prefix}.gate_proj.weight", inter, hidden, component, layer, count=count),
        _linear(f"{prefix}.up_proj.weight", inter, hidden, component, layer, count=count),
        _linear(f"{prefix}.down_proj.weight", hidden, inter, component, layer, count=count),
    ]


def attention_tensors(cfg: ModelConfig, i: int) -> list[TensorSpec]:
    """One layer's MLA projections and latent norms."""
    p = f"model.layers.{i}.self_attn"
    h = cfg.num_attention_heads
    out: list[TensorSpec] = []
    if cfg.q_lora_rank is None:
        out.append(_linear(f"{p}.q_proj.weight", h * cfg.qk_head_dim, cfg.hidden_size, "attention", i))
    else:
        out += [
            _linear(f"{p}.q_a_proj.weight", cfg.q_lora_rank, cfg.hidden_size, "attention", i, sharded=False),
            _norm(f"{p}.q_a_layernorm.weight", cfg.q_lora_rank, i),
            _linear(f"{p}.q_b_proj.weight", h * cfg.qk_head_dim, cfg.q_lora_rank, "attention", i),
        ]
    out += [
        _linear(f"{p}.kv_a_proj_with_mqa.weight", cfg.kv_cache_width, cfg.hidden_size, "attention", i, sharded=False),
        _norm(f"{p}.kv_a_layernorm.weight", cfg.kv_lora_rank, i),
        _linear(
            f"{p}.kv_b_proj.weight", h * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank, "attention", i
        ),
        _linear(f"{p}.o_proj.weight", cfg.hidden_size, h * cfg.v_head_dim, "attention", i),
    ]
    if cfg.attention_bias:  # K2 has none; counted as attention parameters like params.py does
        for name, width in (("q_a_proj", cfg.q_lora_rank or 0), ("kv_a_proj_with_mqa", cfg.kv_cache_width), ("o_proj", cfg.hidden_size)):
            if width:
                out.append(TensorSpec(f"{p}.{name}.bias", (width,), "vector", "attention", i, False))
    return out


def mlp_tensors(cfg: ModelConfig, i: int) -> list[TensorSpec]:
    """One layer's dense SwiGLU, or its router, routed experts and shared experts."""
    p = f"model.layers.{i}.mlp"
    if not cfg.is_moe_layer(i):
        return _swiglu(p, cfg.hidden_size, cfg.intermediate_size, "dense_mlp", i)
    out = [
        TensorSpec(f"{p}.gate.weight", (cfg.n_routed_experts, cfg.hidden_size), "router", "routers", i, False),
        TensorSpec(f"{p}.gate.e_score_correction_bias", (cfg.n_routed_experts,), "score_bias", "routers", i, False),
        *_swiglu(f"{p}.experts.*", cfg.hidden_size, cfg.moe_intermediate_size, "routed_experts", i, cfg.n_routed_experts),
    ]
    if cfg.n_shared_experts:
        out += _swiglu(
            f"{p}.shared_experts", cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts, "shared_experts", i
        )
    return out


def model_tensors(cfg: ModelConfig) -> list[TensorSpec]:
    """Every learned tensor of the checkpoint (not the stray `rotary_emb.inv_freq` buffers)."""
    last = cfg.num_hidden_layers
    out = [TensorSpec("model.embed_tokens.weight", (cfg.vocab_size, cfg.hidden_size), "embedding", "embed_tokens", PRE_LAYERS, True)]
    for i in range(cfg.num_hidden_layers):
        out += [
            _norm(f"model.layers.{i}.input_layernorm.weight", cfg.hidden_size, i),
            *attention_tensors(cfg, i),
            _norm(f"model.layers.{i}.post_attention_layernorm.weight", cfg.hidden_size, i),
            *mlp_tensors(cfg, i),
        ]
    out.append(_norm("model.norm.weight", cfg.hidden_size, last))
    if not cfg.tie_word_embeddings:
        out.append(TensorSpec("lm_head.weight", (cfg.vocab_size, cfg.hidden_size), "lm_head", "lm_head", last, True))
    return out

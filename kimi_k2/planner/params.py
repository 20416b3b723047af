"""Parameter counts from a ModelConfig alone: no tensors are allocated.

Every count is the number of learned values in the checkpoint tensors the model loads (the stray
`rotary_emb.inv_freq` buffers are not parameters; `e_score_correction_bias` is counted with the router, as
SPEC §1 does). For Kimi-K2-Instruct the total is 1,026,408,232,448.
"""

from __future__ import annotations

from dataclasses import dataclass

from kimi_k2.config import ModelConfig


def attention_params(cfg: ModelConfig) -> int:
    """One MLA block's projections, without its two small latent norms (SPEC's 101,122,048 for K2)."""
    h = cfg.num_attention_heads
    if cfg.q_lora_rank is None:
        q = cfg.hidden_size * h * cfg.qk_head_dim
    else:
        q = cfg.hidden_size * cfg.q_lora_rank + cfg.q_lora_rank * h * cfg.qk_head_dim
    kv_a = cfg.hidden_size * cfg.kv_cache_width
    kv_b = cfg.kv_lora_rank * h * (cfg.qk_nope_head_dim + cfg.v_head_dim)
    o = h * cfg.v_head_dim * cfg.hidden_size
    bias = (cfg.q_lora_rank or 0) + cfg.kv_cache_width + cfg.hidden_size if cfg.attention_bias else 0
    return q + kv_a + kv_b + o + bias


def attention_norm_params(cfg: ModelConfig) -> int:
    """`q_a_layernorm` (only with q LoRA) and `kv_a_layernorm`."""
    return (cfg.q_lora_rank or 0) + cfg.kv_lora_rank


def swiglu_params(hidden: int, intermediate: int) -> int:
    """gate_proj + up_proj + down_proj."""
    return 3 * hidden * intermediate


def expert_params(cfg: ModelConfig) -> int:
    """One routed expert (44,040,192 for K2)."""
    return swiglu_params(cfg.hidden_size, cfg.moe_intermediate_size)


def router_params(cfg: ModelConfig) -> int:
    """`mlp.gate.weight` plus `e_score_correction_bias` (2,752,896 for K2)."""
    return cfg.n_routed_experts * cfg.hidden_size + cfg.n_routed_experts


@dataclass(frozen=True, slots=True)
class ParamCounts:
    """Totals over the whole model, by component."""

    embed_tokens: int
    lm_head: int
    attention: int  # all layers' projections
    norms: int  # every RMSNorm weight (layer norms, latent norms, final norm)
    dense_mlp: int  # the dense layers' SwiGLU
    routed_experts: int  # all routed experts of all MoE layers
    shared_experts: int
    routers: int
    active_routed_experts: int  # the num_experts_per_tok experts a token runs through, all MoE layers

    @property
    def total(self) -> int:
        return (
            self.embed_tokens
            + self.lm_head
            + self.attention
            + self.norms
            + self.dense_mlp
            + self.routed_experts
            + self.shared_experts
            + self.routers
        )

    @property
    def active(self) -> int:
        """Parameters one token touches, counting the embedding table (K2: ≈ 32.9B)."""
        return self.total - self.routed_experts + self.active_routed_experts

    def as_dict(self) -> dict[str, int]:
        return {
            "embed_tokens": self.embed_tokens,
            "lm_head": self.lm_head,
            "attention": self.attention,
            "norms": self.norms,
            "dense_mlp": self.dense_mlp,
            "routed_experts": self.routed_experts,
            "shared_experts": self.shared_experts,
            "routers": self.routers,
            "total": self.total,
            "active": self.active,
        }


def count_params(cfg: ModelConfig) -> ParamCounts:
    n_layers = cfg.num_hidden_layers
    n_moe = cfg.num_moe_layers
    n_dense = n_layers - n_moe
    embed = cfg.vocab_size * cfg.hidden_size
    return ParamCounts(
        embed_tokens=embed,
        lm_head=0 if cfg.tie_word_embeddings else embed,
        attention=n_layers * attention_params(cfg),
        norms=n_layers * (2 * cfg.hidden_size + attention_norm_params(cfg)) + cfg.hidden_size,
        dense_mlp=n_dense * swiglu_params(cfg.hidden_size, cfg.intermediate_size),
        routed_experts=n_moe * cfg.n_routed_experts * expert_params(cfg),
        shared_experts=n_moe * swiglu_params(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts),
        routers=n_moe * router_params(cfg),
        active_routed_experts=n_moe * cfg.num_experts_per_tok * expert_params(cfg),
    )

"""The K2 decoder: embedding, 61 blocks of (MLA, dense-or-MoE FFN), final norm, lm_head.

Module attribute names are the checkpoint's tensor names (`model.layers.3.mlp.experts.17.down_proj.weight`),
so a state_dict key *is* a checkpoint key. Build it on the meta device (`build_model`), then materialise it by
loading (`kimi_k2.load_model`) or by `init_weights` for training from scratch.

Caches and statistics are arguments of `forward`, never module state: the same module runs a training batch,
a full-sequence reference forward, a contiguous-cache decode and a paged engine step.

Legend: B batch, S sequence (this step), D hidden, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kimi_k2.config import ModelConfig
from kimi_k2.model.attention import ATTENTION_PATHS, MLA, LatentCache
from kimi_k2.model.moe import MLP, MoE
from kimi_k2.model.linear import Linear
from kimi_k2.model.norm import RMSNorm
from kimi_k2.model.rope import rope_cos_sin, rope_inv_freq, yarn_attention_factor

EXPERT_PATHS = ("grouped", "loop")


@dataclass
class ForwardStats:
    """Per-layer statistics a training forward collects on the way (QK-Clip and load balancing)."""

    max_logits: list[torch.Tensor] = field(default_factory=list)  # one float32 [H] per layer (naive, fused)
    expert_counts: list[torch.Tensor] = field(default_factory=list)  # one int64 [E] per MoE layer


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLA(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp: nn.Module = MoE(cfg) if cfg.is_moe_layer(layer_idx) else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: LatentCache | None,
        attention_path: str,
        stats: ForwardStats | None,
    ) -> torch.Tensor:
        h = h + self.self_attn(
            self.input_layernorm(h), cos, sin, mask, cache, attention_path, stats.max_logits if stats else None
        )
        x = self.post_attention_layernorm(h)
        if isinstance(self.mlp, MoE):
            return h + self.mlp(x, stats.expert_counts if stats else None)
        return h + self.mlp(x)


class KimiK2Model(nn.Module):
    """The `model.` prefix of the checkpoint: `embed_tokens`, `layers`, `norm`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def causal_mask(positions: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[B, S, S] bool for a cache-less forward: key j is visible to query i when pos_j <= pos_i and j is real."""
    mask = positions.unsqueeze(-1) >= positions.unsqueeze(-2)
    if attention_mask is not None:
        mask = mask & attention_mask.bool().unsqueeze(-2)
    return mask


class KimiK2ForCausalLM(nn.Module):
    """The whole model (`DeepseekV3ForCausalLM` in transformers): `model.*` and `lm_head`."""

    def __init__(self, cfg: ModelConfig, attention: str = "naive", experts: str = "grouped") -> None:
        super().__init__()
        self.config = cfg
        self.model = KimiK2Model(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # Derived from the config, not loaded: kept off the state_dict and recomputed on first use per device.
        self._inv_freq = rope_inv_freq(cfg)
        self._rope_attention_factor = yarn_attention_factor(cfg)
        self.attention_path = "naive"
        self.set_paths(attention=attention, experts=experts)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The activations' dtype: the final norm's. Linear weights and the embedding may be stored in another
        (a checkpoint loaded as stored, see `Linear`); their products and rows are widened to this one."""
        return self.model.norm.weight.dtype

    def set_paths(self, attention: str | None = None, experts: str | None = None) -> KimiK2ForCausalLM:
        """Choose the attention path (`naive` | `fused` | `absorbed`) and the expert path (`grouped` | `loop`)."""
        if attention is not None:
            if attention not in ATTENTION_PATHS:
                raise ValueError(f"attention path {attention!r}: choose one of {ATTENTION_PATHS}")
            self.attention_path = attention
        if experts is not None:
            if experts not in EXPERT_PATHS:
                raise ValueError(f"expert path {experts!r}: choose one of {EXPERT_PATHS}")
            for module in self.modules():
                if isinstance(module, MoE):
                    module.expert_path = experts
        return self

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin float32 [B, S, R/2] for integer positions [B, S]."""
        if self._inv_freq.device != positions.device:
            self._inv_freq = self._inv_freq.to(positions.device)
        return rope_cos_sin(self._inv_freq, positions, self._rope_attention_factor)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: LatentCache | None = None,
        stats: ForwardStats | None = None,
    ) -> torch.Tensor:
        """input_ids [B, S] → final-normed hidden states [B, S, D]."""
        layout = getattr(self, "parallel", None)  # set by kimi_k2.parallel.shard_model
        if layout is not None and layout.is_parallel:
            raise RuntimeError("this model holds one rank's shard: its own forward is the single-process reference; "
                               "run it through the engine (kimi_k2.LLM), whose runner adds the reduces")
        if positions is None:
            if cache is not None:
                raise ValueError("a forward with a cache needs explicit positions")
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
        cos, sin = self.rope(positions)
        mask = None if cache is not None else causal_mask(positions, attention_mask)
        h = self.model.embed_tokens(input_ids).to(self.compute_dtype)
        for layer in self.model.layers:
            h = layer(h, cos, sin, mask, cache, self.attention_path, stats)
        return self.model.norm(h)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: LatentCache | None = None,
        stats: ForwardStats | None = None,
    ) -> torch.Tensor:
        """input_ids [B, S] → logits [B, S, V].

        positions [B, S] default to 0..S-1; `attention_mask [B, S]` (1 = token, 0 = padding) applies without a
        cache; with a cache, the cache supplies the mask. `stats` collects QK-Clip and balancing statistics.
        """
        return self.lm_head(self.hidden_states(input_ids, positions, attention_mask, cache, stats))

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> KimiK2ForCausalLM:
        """Random weights for training from scratch: N(0, initializer_range) matrices, unit norms, zero biases."""
        std = self.config.initializer_range
        for name, param in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.normal_(0.0, std, generator=generator)
        for name, buf in self.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.zero_()
        return self


def build_model(
    cfg: ModelConfig,
    *,
    device: str | torch.device = "meta",
    dtype: torch.dtype = torch.float32,
    attention: str = "naive",
    experts: str = "grouped",
) -> KimiK2ForCausalLM:
    """Construct the module tree on `device` (meta by default: no memory until weights are assigned).

    Parameters get `dtype`; the router's correction bias stays float32 as in the checkpoint.
    """
    with torch.device(device):
        model = KimiK2ForCausalLM(cfg, attention=attention, experts=experts)
    model.to(dtype=dtype)
    for module in model.modules():
        if hasattr(module, "e_score_correction_bias"):
            module.e_score_correction_bias = module.e_score_correction_bias.float()
    return model


def random_model(
    cfg: ModelConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> KimiK2ForCausalLM:
    """A materialised model with random weights (tests, benchmarks, and the start of training)."""
    model = build_model(cfg, device=device, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    return model.init_weights(generator)

"""QK-Clip for MLA (Kimi K2 technical report §2.1, SPEC §7): cap each head's largest attention logit at τ.

After an optimizer step, for every head h whose largest pre-softmax logit of the step (after the softmax scale,
over the whole batch) `S_max^h` exceeded τ, rescale that head's query/key weights by γ = τ / S_max^h:

    q_nope rows of h  (q_b_proj or q_proj rows h·(N+R) + [0, N))       × sqrt(γ)
    q_rope rows of h  (rows h·(N+R) + [N, N+R))                         × γ
    k_nope rows of h  (kv_b_proj rows h·(N+V) + [0, N); the v rows stay) × sqrt(γ)

so both parts of the logit, q_nope·k_nope and q_rope·k_rope, shrink by exactly γ: the same inputs now give
`S_max^h = τ`. The rotary key is one head shared by all heads (kv_a_proj_with_mqa rows C..C+R); scaling it would
touch heads that did not exceed τ, so per-head clipping puts the whole factor γ on q_rope instead. Heads at or
below τ are not touched at all. The statistic comes from the training forward itself
(`ForwardStats.max_logits`, recorded by `MLA.attend_naive`), so no second pass is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kimi_k2.model.attention import MLA


def attention_layers(model: nn.Module) -> list[MLA]:
    """The model's MLA modules in layer order (the order `ForwardStats.max_logits` is recorded in)."""
    return [module for module in model.modules() if isinstance(module, MLA)]


def clip_factors(max_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """γ per head [H]: τ / S_max for heads above τ, exactly 1 for the others."""
    max_logits = max_logits.float()
    return torch.where(max_logits > tau, tau / max_logits.clamp(min=tau), torch.ones_like(max_logits))


@torch.no_grad()
def qk_clip_layer_(attn: MLA, max_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Apply QK-Clip to one MLA module in place; returns γ [H] (1 where the head was left alone)."""
    if max_logits.shape != (attn.n_heads,):
        raise ValueError(
            f"layer {attn.layer_idx}: max_logits has shape {list(max_logits.shape)}, expected [{attn.n_heads}] "
            "(one value per head)"
        )
    gamma = clip_factors(max_logits, tau)
    heads = (gamma < 1).nonzero().flatten()
    if heads.numel() == 0:
        return gamma
    g = gamma[heads]  # (h,) for the clipped heads only
    n, r, v = attn.nope_dim, attn.rope_dim, attn.v_dim
    q_weight = (attn.q_proj if hasattr(attn, "q_proj") else attn.q_b_proj).weight
    q = q_weight.view(attn.n_heads, n + r, -1)  # (H, N+R, in) — a view: writes land in the parameter
    heads = heads.to(q.device)
    q[heads, :n] *= g.sqrt().to(q)[:, None, None]
    q[heads, n:] *= g.to(q)[:, None, None]
    kv = attn.kv_b_proj.weight.view(attn.n_heads, n + v, -1)  # (H, N+V, C)
    kv[heads, :n] *= g.sqrt().to(kv)[:, None, None]
    return gamma


def qk_clip_(layers: Sequence[MLA] | nn.Module, max_logits: Sequence[torch.Tensor], tau: float) -> list[torch.Tensor]:
    """QK-Clip every attention layer (a model or its MLA list) from the step's per-layer max logits [H] each.

    Returns γ [H] per layer (1 = not clipped).
    """
    if tau <= 0:
        raise ValueError(f"QK-Clip threshold tau={tau} must be positive")
    mla = attention_layers(layers) if isinstance(layers, nn.Module) else list(layers)
    if len(max_logits) != len(mla):
        raise ValueError(
            f"QK-Clip got max logits for {len(max_logits)} layers but the model has {len(mla)} attention layers "
            "(record them with ForwardStats on the naive attention path)"
        )
    return [qk_clip_layer_(attn, logits, tau) for attn, logits in zip(mla, max_logits)]

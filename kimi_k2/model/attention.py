"""Multi-head Latent Attention (MLA), DeepSeek-V2/V3 and Kimi K2.

Source: SPEC §2 and the DeepSeek-V3 paper. One set of weights, two ways to attend:

* naive    — expand the latent to per-head keys and values with `kv_b_proj`, then ordinary attention.
             Used for training (QK-Clip records the max logit per head here) and as the reference.
* fused    — the naive expansion, then PyTorch's fused `scaled_dot_product_attention` (no [B, H, S, T]
             probabilities kept for the backward; the causal kernel when the mask is exactly causal):
             training's fast path. QK-Clip's max logits come from a separate no-grad pass over the scores,
             in query chunks (`masked_max_logits`).
* absorbed — fold `kv_b_proj`'s key part into the query and its value part into the output, so attention
             runs directly over the cached latent `c_kv` and the shared roped key `k_pe`
             (kv_lora_rank + qk_rope_head_dim = 576 values per token per layer for K2).

All three give the same outputs up to float rounding; `tests/test_model.py` checks that they agree (and, for
`fused`, that gradients and max logits agree with `naive`'s).

Legend: B batch, S query length, T key length, H heads, D hidden, C kv_lora_rank, R rope dim,
N qk_nope_head_dim, V v_head_dim.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from kimi_k2.config import ModelConfig
from kimi_k2.model.linear import Linear
from kimi_k2.model.norm import RMSNorm
from kimi_k2.model.rope import apply_rope


def linear_weight(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The dense weight of a projection in `dtype`: `weight` itself (cast if stored in another float dtype), or the
    dequantized weight of a quantized linear."""
    dequantize = getattr(module, "dequantize_weight", None)
    return dequantize(dtype) if dequantize is not None else module.weight.to(dtype)


ATTENTION_PATHS = ("naive", "fused", "absorbed")
MAX_LOGIT_PATHS = ("fused", "naive")  # the paths that record QK-Clip's per-head max logits (training's)

# A finite "minus infinity": a fully masked row (a padding query) softmaxes to uniform weights instead of NaN.
MASKED = torch.finfo(torch.float32).min


class LatentCache(Protocol):
    """What attention needs from a KV cache: store the new latents, return all of them with a key mask.

    `update` receives this step's normalised latent `c_kv [B, S, C]` and roped shared key `k_pe [B, S, R]` for
    layer `layer_idx` and returns the keys to attend over, `c_kv [B, T, C]`, `k_pe [B, T, R]`, and the boolean
    mask `[B, S, T]` (True = may attend). Contiguous and paged caches both implement it, so the same model code
    runs a full forward, a decode step, or a paged batch of mixed prefill and decode.
    """

    def update(
        self, layer_idx: int, c_kv: torch.Tensor, k_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def is_causal_mask(mask: torch.Tensor) -> bool:
    """Whether a key mask [B, S, T] is exactly the causal one over S = T tokens (no padding, no cache)."""
    s, t = mask.shape[-2:]
    return s == t and bool(torch.equal(mask, torch.ones(s, t, dtype=torch.bool, device=mask.device).tril().expand_as(mask)))


def masked_max_logits(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Per-head max of q·kᵀ over the allowed (query, key) pairs: float32 [H], before the softmax scale.

    q [B, H, S, E], k [B, H, T, E], key_mask [B, 1, S, T] (True = may attend). Queries go in chunks, each against
    the keys up to its last allowed one, so no [B, H, S, T] tensor is built and a causal mask costs about half the
    full product. A head with no allowed pair gets -inf.
    """
    best = torch.full((q.shape[1],), float("-inf"), dtype=torch.float32, device=q.device)
    for start in range(0, q.shape[2], chunk):
        allowed = key_mask[:, :, start : start + chunk]  # (B, 1, c, T)
        keys_used = allowed.any(dim=(0, 1, 2)).nonzero()
        if keys_used.numel() == 0:
            continue
        end = int(keys_used[-1]) + 1
        scores = torch.matmul(q[:, :, start : start + chunk], k[:, :, :end].transpose(-1, -2))  # (B, H, c, end)
        scores.masked_fill_(~allowed[..., :end], float("-inf"))
        best = torch.maximum(best, scores.amax(dim=(0, 2, 3)).float())
    return best


class MLA(nn.Module):
    """The `self_attn` module; attribute names are the checkpoint's tensor names."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = cfg.num_attention_heads
        self.nope_dim, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        self.softmax_scale = cfg.softmax_scale
        qk_dim = cfg.qk_head_dim
        if cfg.q_lora_rank is None:
            self.q_proj = Linear(cfg.hidden_size, self.n_heads * qk_dim, bias=False)
        else:
            self.q_a_proj = Linear(cfg.hidden_size, cfg.q_lora_rank, bias=cfg.attention_bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_b_proj = Linear(cfg.q_lora_rank, self.n_heads * qk_dim, bias=False)
        self.kv_a_proj_with_mqa = Linear(cfg.hidden_size, cfg.kv_cache_width, bias=cfg.attention_bias)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg.rms_norm_eps)
        self.kv_b_proj = Linear(cfg.kv_lora_rank, self.n_heads * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = Linear(self.n_heads * self.v_dim, cfg.hidden_size, bias=cfg.attention_bias)

    # ------------------------------------------------------------------ projections
    def project_query(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, D] → q_nope [B, S, H, N], roped q_pe [B, S, H, R]."""
        if hasattr(self, "q_proj"):
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.unflatten(-1, (self.n_heads, self.nope_dim + self.rope_dim))  # (B, S, H, N+R)
        q_nope, q_pe = q.split([self.nope_dim, self.rope_dim], dim=-1)
        return q_nope, apply_rope(q_pe, cos.unsqueeze(-2), sin.unsqueeze(-2))

    def project_latent(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, D] → normalised c_kv [B, S, C], roped k_pe [B, S, R]: exactly what a cache stores."""
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        return self.kv_a_layernorm(c_kv), apply_rope(k_pe, cos, sin)

    # ------------------------------------------------------------------ attention
    def expand_latent(self, c_kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """c_kv [B, T, C] → per-head k_nope [B, T, H, N] and v [B, T, H, V] (`kv_b_proj`)."""
        kv = self.kv_b_proj(c_kv).unflatten(-1, (self.n_heads, self.nope_dim + self.v_dim))  # (B, T, H, N+V)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        return k_nope, v

    def attend_naive(
        self,
        q_nope: torch.Tensor,
        q_pe: torch.Tensor,
        c_kv: torch.Tensor,
        k_pe: torch.Tensor,
        mask: torch.Tensor,
        max_logits: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Expand the latent to per-head K/V and attend. Returns [B, S, H*V] (before o_proj).

        When `max_logits` is a list, this head's largest pre-softmax logit over the batch (after the softmax
        scale, masked positions excluded) is appended as a float32 `[H]` tensor: QK-Clip's statistic, taken from
        the scores this forward computes anyway.
        """
        k_nope, v = self.expand_latent(c_kv)  # (B, T, H, N), (B, T, H, V)
        scores = torch.einsum("bshn,bthn->bhst", q_nope, k_nope) + torch.einsum("bshr,btr->bhst", q_pe, k_pe)
        scores = scores.float() * self.softmax_scale  # (B, H, S, T)
        scores = scores.masked_fill(~mask.unsqueeze(1), MASKED)
        if max_logits is not None:
            max_logits.append(scores.detach().amax(dim=(0, 2, 3)))
        probs = scores.softmax(dim=-1).to(v.dtype)
        out = torch.einsum("bhst,bthv->bshv", probs, v)  # (B, S, H, V)
        return out.flatten(-2)

    def attend_fused(
        self,
        q_nope: torch.Tensor,
        q_pe: torch.Tensor,
        c_kv: torch.Tensor,
        k_pe: torch.Tensor,
        mask: torch.Tensor,
        max_logits: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`attend_naive`'s math through fused SDPA. Returns [B, S, H*V] (before o_proj); `max_logits` as there."""
        k_nope, v = self.expand_latent(c_kv)  # (B, T, H, N), (B, T, H, V)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)  # (B, H, S, N+R)
        k_pe_heads = k_pe.unsqueeze(2).expand(-1, -1, self.n_heads, -1)  # (B, T, H, R), shared by every head
        k = torch.cat([k_nope, k_pe_heads], dim=-1).transpose(1, 2)  # (B, H, T, N+R)
        key_mask = mask.unsqueeze(1)  # (B, 1, S, T)
        if max_logits is not None:  # scaling after the max is exact: rounding a product is monotonic
            max_logits.append(masked_max_logits(q.detach(), k.detach(), key_mask) * self.softmax_scale)
        # PyTorch's fused (flash) kernels want value heads as wide as query/key heads (K2: 128 vs 192); with
        # narrower ones SDPA falls back to its unfused math. Zero columns make them equal and are cut off after.
        pad = q.shape[-1] - self.v_dim
        v = (F.pad(v, (0, pad)) if pad > 0 else v).transpose(1, 2)  # (B, H, T, N+R)
        if is_causal_mask(mask):  # training's packed windows: the kernel skips the blocks above the diagonal
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale)
        else:  # an additive mask with a finite minimum, as in `attend_naive`: a fully masked row gets uniform weights
            bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~key_mask, MASKED)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.softmax_scale)
        return out[..., : self.v_dim].transpose(1, 2).flatten(-2)  # (B, S, H*V)

    def attend_absorbed(
        self, q_nope: torch.Tensor, q_pe: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Attend over the latent directly. Returns [B, S, H*V] (before o_proj)."""
        w = linear_weight(self.kv_b_proj, q_nope.dtype).unflatten(0, (self.n_heads, self.nope_dim + self.v_dim))  # (H, N+V, C)
        w_uk, w_uv = w[:, : self.nope_dim], w[:, self.nope_dim :]  # (H, N, C), (H, V, C)
        q_latent = torch.einsum("bshn,hnc->bshc", q_nope, w_uk.to(q_nope.dtype))
        scores = torch.einsum("bshc,btc->bhst", q_latent, c_kv) + torch.einsum("bshr,btr->bhst", q_pe, k_pe)
        scores = scores.float() * self.softmax_scale
        scores = scores.masked_fill(~mask.unsqueeze(1), MASKED)
        probs = scores.softmax(dim=-1).to(c_kv.dtype)
        out_latent = torch.einsum("bhst,btc->bshc", probs, c_kv)  # (B, S, H, C)
        out = torch.einsum("bshc,hvc->bshv", out_latent, w_uv.to(out_latent.dtype))
        return out.flatten(-2)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: LatentCache | None = None,
        path: str = "naive",
        max_logits: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x [B, S, D], cos/sin [B, S, R/2]. Without a cache, `mask [B, S, S]` applies to this step's tokens.
        `path` is one of ATTENTION_PATHS; only those in MAX_LOGIT_PATHS record `max_logits`."""
        q_nope, q_pe = self.project_query(x, cos, sin)
        c_kv, k_pe = self.project_latent(x, cos, sin)
        if cache is not None:
            c_kv, k_pe, mask = cache.update(self.layer_idx, c_kv, k_pe)
        assert mask is not None, "attention needs a mask when no cache supplies one"
        if path == "absorbed":
            out = self.attend_absorbed(q_nope, q_pe, c_kv, k_pe, mask)
        elif path == "fused":
            out = self.attend_fused(q_nope, q_pe, c_kv, k_pe, mask, max_logits)
        else:
            out = self.attend_naive(q_nope, q_pe, c_kv, k_pe, mask, max_logits)
        return self.o_proj(out)

"""Rotary position embedding with YaRN frequencies, applied to interleaved pairs (GPT-J layout).

Source: SPEC §2 (DeepSeek-V3 `inference/model.py`, the YaRN paper). The rotated pairs are `(x[2i], x[2i+1])`
with angle `pos * inv_freq[i]`; the output keeps that interleaved layout, so no weight permutation is ever
needed and a cached `k_pe` is laid out like the checkpoint's `kv_a_proj_with_mqa` rows.

Shapes: R = rotary dim (qk_rope_head_dim), R/2 frequencies.
"""

from __future__ import annotations

import math

import torch

from kimi_k2.config import ModelConfig


def _correction_dim(num_rotations: float, dim: int, base: float, original_max: int) -> float:
    """The rotary dimension whose wavelength fits `num_rotations` times into the original context."""
    return dim * math.log(original_max / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_correction_range(dim: int, base: float, original_max: int, beta_fast: float, beta_slow: float) -> tuple[int, int]:
    """(low, high) frequency indices between which YaRN ramps from extrapolation to interpolation."""
    low = math.floor(_correction_dim(beta_fast, dim, base, original_max))
    high = math.ceil(_correction_dim(beta_slow, dim, base, original_max))
    return max(low, 0), min(high, dim - 1)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies, float32 `[R/2]`: plain RoPE, or YaRN-scaled when `rope_scaling.type == "yarn"`."""
    dim, base = cfg.qk_rope_head_dim, float(cfg.rope_theta)
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim))
    if cfg.rope_type != "yarn":
        return inv_freq
    assert cfg.rope_scaling is not None
    scaling = cfg.rope_scaling
    factor = float(scaling["factor"])
    low, high = yarn_correction_range(
        dim,
        base,
        int(scaling["original_max_position_embeddings"]),
        float(scaling.get("beta_fast") or 32.0),
        float(scaling.get("beta_slow") or 1.0),
    )
    span = (high - low) if high != low else 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / span).clamp(0.0, 1.0)
    return inv_freq / factor * ramp + inv_freq * (1.0 - ramp)


def yarn_attention_factor(cfg: ModelConfig) -> float:
    """YaRN's cos/sin magnitude factor `mscale(factor, mscale) / mscale(factor, mscale_all_dim)`; 1 for K2."""
    if cfg.rope_type != "yarn":
        return 1.0
    assert cfg.rope_scaling is not None
    factor = float(cfg.rope_scaling["factor"])

    def mscale(m: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    m, m_all = cfg.rope_scaling.get("mscale"), cfg.rope_scaling.get("mscale_all_dim")
    if m and m_all:
        return mscale(float(m)) / mscale(float(m_all))
    return mscale(1.0)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, attention_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, float32 `[..., R/2]`, for integer `positions` of any shape."""
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq.to(positions.device)
    cos, sin = angles.cos(), angles.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of `x [..., R]` by `cos/sin [..., R/2]` (broadcast over the dims between).

    Computed in float32 and returned in x's dtype.
    """
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., R/2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def rope_cis(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """cos/sin `[..., R/2]` as one complex64 tensor `cos + i·sin`, for `apply_rope_complex`."""
    return torch.complex(cos, sin)


def apply_rope_complex(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """`apply_rope` as one complex product: an interleaved pair `(x[2i], x[2i+1])` is the complex number
    `x[2i] + i·x[2i+1]`, and rotating it is multiplying by `cis[i]` — the same two products and one sum or
    difference per component, in a handful of operators instead of a dozen (the engine's decode step runs
    this twice per layer on one row). Equal to `apply_rope` up to one rounding of each component: where the
    complex kernel vectorises differently from the real one, a product may be fused with its sum (an FMA),
    so a value can differ in its last bit (tests/test_model.py)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., R/2, 2)
    if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(stride % 2 for stride in pairs.stride()[:-1]):
        pairs = pairs.clone()  # view_as_complex needs every complex number aligned to 2 floats (a fresh copy is)
    return torch.view_as_real(torch.view_as_complex(pairs) * cis).flatten(-2).to(x.dtype)

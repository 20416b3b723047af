"""Muon and AdamW as pure update functions (the math of `MuonClip`, with no optimizer bookkeeping).

Muon (Keller Jordan 2024; "Muon is Scalable for LLM Training", Moonlight, arXiv 2502.16982; K2 report §2.1,
SPEC §7) updates a 2-D weight W (n×m) with the orthogonalised momentum of its gradient:

    M ← μ·M + (1−μ)·G                 momentum, kept as an EMA (see below)
    U ← (1−μ)·G + μ·M                 Nesterov look-ahead
    O ← NS5(U) · 0.2·sqrt(max(n, m))  orthogonalise, then scale so that RMS(O) ≈ 0.2, AdamW's typical update RMS
    W ← W − η·(O + λ·W)               decoupled weight decay

NS5 is five Newton–Schulz steps of the quintic `X ← aX + (bA + cA²)X`, `A = XXᵀ`, (a, b, c) = (3.4445, −4.7750,
2.0315), in bfloat16 (K2's choice; `dtype=torch.float32` for CPUs without bf16 units), on the
Frobenius-normalised matrix (transposed so that the Gram matrix is the small one).
It maps the singular values into roughly (0.5, 1.5) rather than exactly to 1 — by design (Jordan): the steep
slope at zero matters more than convergence.

The momentum is kept as an exponential average, `M_ema = (1−μ)·M_sum` of the paper's `M ← μM + G`. Newton–Schulz
divides by the norm first, so the update is the same; the EMA form is also what `torch.optim.Muon` keeps, which
lets `tests/test_muonclip.py` compare the two bit for bit in bfloat16.
"""

from __future__ import annotations

import math

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7


def zeropower_via_newtonschulz5(
    update: torch.Tensor,
    steps: int = NS_STEPS,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = NS_EPS,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """≈ U·Vᵀ of the SVD `update = U S Vᵀ` for a 2-D [n, m] tensor, computed and returned in `dtype`.

    bfloat16 is K2's choice and the fast one on GPUs; on CPUs without bf16 matrix units float32 is ~10× faster.
    """
    if update.ndim != 2:
        raise ValueError(f"Newton–Schulz needs a 2-D matrix, got shape {list(update.shape)}")
    a, b, c = coefficients
    x = update.to(dtype)
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the wide orientation: the Gram matrix X Xᵀ is then min(n, m)²
        x = x.T
    x = x / (x.norm() + eps)  # Frobenius norm ≥ spectral norm, so every singular value starts in [0, 1]
    for _ in range(steps):
        gram = x @ x.T  # (k, k), k = min(n, m)
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
        x = torch.addmm(x, poly, x, beta=a)  # a·X + (b·A + c·A²)·X
    return x.T if tall else x


def match_rms_adamw_scale(shape: torch.Size | tuple[int, ...]) -> float:
    """Moonlight's update scale 0.2·sqrt(max(n, m)): the orthogonalised update gets AdamW's RMS (≈ 0.2)."""
    return 0.2 * math.sqrt(max(shape[0], shape[1]))


@torch.no_grad()
def muon_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum_buffer: torch.Tensor,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = NS_STEPS,
    ns_dtype: torch.dtype = torch.bfloat16,
) -> None:
    """One Muon step on a 2-D `param` in place; `momentum_buffer` (same shape, zeros at first) is updated too."""
    if param.ndim != 2:
        raise ValueError(f"Muon updates 2-D weight matrices only, got shape {list(param.shape)}")
    momentum_buffer.lerp_(grad, 1 - momentum)  # M ← μ·M + (1−μ)·G
    direction = grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer
    ortho = zeropower_via_newtonschulz5(direction, steps=ns_steps, dtype=ns_dtype)
    param.mul_(1 - lr * weight_decay)
    param.add_(ortho.to(param.dtype), alpha=-lr * match_rms_adamw_scale(param.shape))


@torch.no_grad()
def adamw_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> None:
    """One AdamW step (Loshchilov & Hutter; `torch.optim.AdamW`'s formula) in place. `step` counts from 1."""
    beta1, beta2 = betas
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias1 = 1 - beta1**step
    bias2_sqrt = math.sqrt(1 - beta2**step)
    denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias1)

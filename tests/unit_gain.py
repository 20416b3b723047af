"""Random weights of ~unit gain for engine tests: logits far from ties, so greedy paths that differ only in float
rounding (another summation order, another rank count) pick the same tokens."""

from __future__ import annotations

import torch
from torch import nn


def unit_gain_(model: nn.Module, seed: int) -> nn.Module:
    """In place: norms 1 ± 0.2, matrices N(0, 0.7²/fan_in), router correction biases U(0, 0.2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * (0.7 / param.shape[-1] ** 0.5))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.rand(buf.shape, generator=gen) * 0.2)
    return model

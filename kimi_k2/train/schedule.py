"""Warm-up, stable, decay (WSD) learning-rate schedule, as K2 was trained (SPEC §7).

K2: linear warm-up over 500 steps to 2e-4, constant for most of training, then a cosine decay to 2e-5.
`wsd_lr(step)` is a pure function of the step (0-based: the learning rate used by optimizer step `step + 1`):

    step <  warmup                      peak · (step + 1) / warmup
    step <  total − decay               peak
    otherwise                           min + (peak − min) · ½(1 + cos(π · t)),  t = (step − start) / decay ∈ [0, 1]

with `min = peak · min_lr_ratio` (K2: 0.1), reaching exactly `min` on the last step.
"""

from __future__ import annotations

import math


def wsd_lr(
    step: int, *, peak_lr: float, total_steps: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float
) -> float:
    """The learning rate for 0-based optimizer step `step` of `total_steps`."""
    if total_steps <= 0:
        raise ValueError(f"total_steps={total_steps} must be positive")
    if warmup_steps < 0 or decay_steps < 0 or warmup_steps + decay_steps > total_steps:
        raise ValueError(
            f"warmup_steps={warmup_steps} + decay_steps={decay_steps} must fit in total_steps={total_steps}"
        )
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return peak_lr
    min_lr = peak_lr * min_lr_ratio
    t = 1.0 if decay_steps <= 1 else min(1.0, (step - decay_start) / (decay_steps - 1))
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))

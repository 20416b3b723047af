"""Auxiliary-loss-free load balancing (DeepSeek-V3 report §2.1.2, used by K2).

Each MoE router carries a bias `e_score_correction_bias [E]` that is added to the expert scores only to choose
the top-k (never to weight the outputs). After every optimizer step it moves a fixed amount `speed` (u; DeepSeek
used 0.001) toward balance, from the step's observed load (tokens routed to each expert, summed over the
micro-batches):

    bias_e ← bias_e + u · sign(mean_load − load_e)

Overloaded experts become less attractive, underloaded ones more, with no gradient through the router and no
auxiliary loss term. The imbalance we log is DeepSeek's MaxVio: `max_e load_e / mean_load − 1` (0 = perfect).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kimi_k2.model.moe import MoEGate


def routers(model: nn.Module) -> list[MoEGate]:
    """The model's MoE routers in layer order (the order `ForwardStats.expert_counts` is recorded in)."""
    return [module for module in model.modules() if isinstance(module, MoEGate)]


def bias_step(load: torch.Tensor, speed: float) -> torch.Tensor:
    """The bias change [E] for one layer's load [E]: +u for experts below the mean, −u above, 0 at the mean."""
    load = load.float()
    return speed * torch.sign(load.mean() - load)


def max_violation(load: torch.Tensor) -> float:
    """MaxVio of one layer's load [E]: max / mean − 1 (0 when balanced; 0 for an empty load)."""
    load = load.float()
    mean = load.mean()
    return float(load.max() / mean - 1) if mean > 0 else 0.0


@torch.no_grad()
def update_router_bias_(
    layers: Sequence[MoEGate] | nn.Module, expert_counts: Sequence[torch.Tensor], speed: float
) -> list[float]:
    """Move every router's bias toward balance from this step's loads [E] per MoE layer; returns MaxVio per layer."""
    gates = routers(layers) if isinstance(layers, nn.Module) else list(layers)
    if len(expert_counts) != len(gates):
        raise ValueError(
            f"load balancing got expert counts for {len(expert_counts)} MoE layers but the model has {len(gates)}"
        )
    for gate, load in zip(gates, expert_counts):
        bias = gate.e_score_correction_bias
        if load.shape != bias.shape:
            raise ValueError(f"expert counts of shape {list(load.shape)} do not match router bias {list(bias.shape)}")
        if speed:
            bias.add_(bias_step(load.to(bias.device), speed).to(bias.dtype))
    return [max_violation(load) for load in expert_counts]

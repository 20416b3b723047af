"""Mixture of experts with K2's sigmoid router (SPEC §2, DeepSeek-V3's "noaux_tc").

The router scores experts with a sigmoid in float32; the correction bias (updated during training by the
aux-loss-free balancing rule, never by gradients) only decides *which* experts run, while the weights come from
the raw sigmoid scores, normalised over the chosen k and multiplied by `routed_scaling_factor`. With
`n_group > 1` (DeepSeek-V3) experts are chosen from the `topk_group` best groups only.

Expert paths, same result: `loop` (per token, per chosen expert — the reference), `grouped` (tokens sorted by
expert, one matmul per expert that has tokens — the fast path) and, for the engine's stacked weights,
`experts_grouped_mm` (the sorted tokens through PyTorch's grouped matmul: a handful of operators whatever the
number of experts used, where per-expert calls cost more than the products of a decode step).

Legend: T tokens (batch × sequence, flattened), D hidden, E routed experts, K experts per token, I expert width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kimi_k2.config import ModelConfig
from kimi_k2.model.linear import Linear


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). The dense FFN, each routed expert, and the shared expert."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, intermediate, bias=False)
        self.up_proj = Linear(hidden, intermediate, bias=False)
        self.down_proj = Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def swiglu_rows(gate_up: torch.Tensor) -> torch.Tensor:
    """[n, 2I] gate and up projections side by side (a fused gate+up weight's output) → silu(gate) * up [n, I]."""
    inter = gate_up.shape[-1] // 2
    return F.silu(gate_up[:, :inter]).mul_(gate_up[:, inter:])


@dataclass(frozen=True, slots=True)
class Routing:
    weights: torch.Tensor  # (T, K) float32, normalised and scaled
    experts: torch.Tensor  # (T, K) int64


def route(
    logits: torch.Tensor,
    correction_bias: torch.Tensor,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: bool,
    routed_scaling_factor: float,
) -> Routing:
    """Choose K experts per token from float32 router logits [T, E] (pure function of its inputs)."""
    scores = logits.sigmoid()
    choice = scores + correction_bias  # the bias only steers selection
    if n_group > 1:
        grouped = choice.unflatten(-1, (n_group, -1))  # (T, G, E/G)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (T, G)
        keep = group_scores.topk(topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        choice = choice.masked_fill(~group_mask.repeat_interleave(grouped.shape[-1], dim=-1), float("-inf"))
    experts = choice.topk(top_k, dim=-1).indices
    weights = scores.gather(-1, experts)
    if norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return Routing(weights=weights * routed_scaling_factor, experts=experts)


class MoEGate(nn.Module):
    """The router: `mlp.gate.weight` [E, D] and the float32 `mlp.gate.e_score_correction_bias` [E]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        # A buffer, not a parameter: the balancing rule updates it, gradients never do. It is in the state_dict.
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))
        self.top_k, self.n_group, self.topk_group = cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
        self.norm_topk_prob, self.routed_scaling_factor = cfg.norm_topk_prob, cfg.routed_scaling_factor

    def forward(self, x: torch.Tensor) -> Routing:
        """x [T, D] → Routing."""
        logits = F.linear(x.float(), self.weight.float())  # (T, E), float32 as the reference does
        return route(
            logits,
            self.e_score_correction_bias.float(),
            self.top_k,
            self.n_group,
            self.topk_group,
            self.norm_topk_prob,
            self.routed_scaling_factor,
        )


def experts_loop(experts: nn.ModuleList, x: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Reference path: every (token, chosen expert) pair on its own. x [T, D] → [T, D] float32."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for t in range(x.shape[0]):
        for k in range(routing.experts.shape[1]):
            expert = experts[int(routing.experts[t, k])]
            out[t] += routing.weights[t, k] * expert(x[t : t + 1])[0].float()
    return out


@dataclass(frozen=True, slots=True)
class SortedAssignments:
    """The T*K (token, expert) assignments of a routing, sorted by expert (token order kept within one). An expert
    id of -1 marks an assignment to an expert another rank holds (expert parallelism): those sort first and are
    `skipped`."""

    tokens: torch.Tensor  # (T*K,) int64, the token of each sorted assignment
    weights: torch.Tensor  # (T*K, 1) float32, its routing weight
    counts: torch.Tensor  # (E,) int64, assignments per expert
    skipped: int = 0  # leading assignments with expert id -1


def sort_assignments(routing: Routing, num_experts: int) -> SortedAssignments:
    flat_experts = routing.experts.flatten()  # (T*K,)
    order = flat_experts.argsort(stable=True)
    counts = torch.bincount(flat_experts + 1, minlength=num_experts + 1)  # slot 0 counts the -1s
    return SortedAssignments(
        tokens=order // routing.experts.shape[1],
        weights=routing.weights.flatten()[order].unsqueeze(-1),
        counts=counts[1:],
        skipped=int(counts[0]),
    )


def dispatch_grouped(
    x: torch.Tensor, routing: Routing, num_experts: int, run_expert: Callable[[int, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Sort the T*K assignments by expert and call `run_expert(e, x_rows)` once per used expert; return the
    routing-weighted sum [T, D] in float32. Shared by the module path here and the engine's stacked weights.
    Assignments to expert -1 (held by another rank) are skipped."""
    sorted_ = sort_assignments(routing, num_experts)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    start = sorted_.skipped
    for e, count in enumerate(sorted_.counts.tolist()):
        if count == 0:
            continue
        tokens, end = sorted_.tokens[start : start + count], start + count
        out.index_add_(0, tokens, run_expert(e, x[tokens]).float() * sorted_.weights[start:end])
        start = end
    return out


HAS_GROUPED_MM = hasattr(F, "grouped_mm")  # torch.nn.functional.grouped_mm; CPU support in recent releases


def experts_grouped_mm(x: torch.Tensor, routing: Routing, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Every used expert in one grouped matmul per projection (`torch.nn.functional.grouped_mm`).

    x [T, D]; w13 [E, 2I, D] (gate rows, then up rows) and w2 [E, D, I] in checkpoint layout. The T·K assignments
    are sorted by expert; group e of the sorted rows multiplies expert e's weights, an expert without rows is not
    read. A handful of operators whatever the number of experts used. Returns the routing-weighted sum [T, D] in
    float32, as `dispatch_grouped` does.
    """
    sorted_ = sort_assignments(routing, w13.shape[0])
    assert sorted_.skipped == 0, "grouped_mm runs every assignment: no expert may be held elsewhere"
    ends = torch.cumsum(sorted_.counts, 0).to(torch.int32)  # (E,) where each expert's rows end
    gate_up = F.grouped_mm(x[sorted_.tokens], w13.transpose(1, 2), offs=ends)  # (T*K, 2I)
    hidden = swiglu_rows(gate_up)  # (T*K, I)
    rows = F.grouped_mm(hidden, w2.transpose(1, 2), offs=ends)  # (T*K, D)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    return out.index_add_(0, sorted_.tokens, rows.float() * sorted_.weights)


def experts_grouped(experts: nn.ModuleList, x: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Fast path: sort the T*K assignments by expert and run each used expert once on its tokens."""
    return dispatch_grouped(x, routing, len(experts), lambda e, rows: experts[e](rows))


class MoE(nn.Module):
    """The `mlp` of an MoE layer: `gate`, `experts.{0..E-1}`, `shared_experts`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate = MoEGate(cfg)
        self.experts = nn.ModuleList(
            MLP(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.n_routed_experts)
        )
        self.shared_experts = (
            MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts) if cfg.n_shared_experts else None
        )
        self.expert_path = "grouped"  # or "loop" (reference)

    def forward(self, x: torch.Tensor, expert_counts: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x [B, S, D] → [B, S, D]. `expert_counts`, when a list, receives this layer's tokens per expert [E]."""
        flat = x.reshape(-1, x.shape[-1])  # (T, D)
        routing = self.gate(flat)
        if expert_counts is not None:
            expert_counts.append(torch.bincount(routing.experts.flatten(), minlength=len(self.experts)))
        run = experts_grouped if self.expert_path == "grouped" else experts_loop
        out = run(self.experts, flat, routing).to(x.dtype).view_as(x)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out

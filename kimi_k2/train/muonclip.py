"""MuonClip: K2's optimizer — Muon for the hidden weight matrices, AdamW for the rest, QK-Clip after each step.

A thin `torch.optim.Optimizer` over the pure functions of `muon.py` and `qk_clip.py`. Every param group says which
rule it follows (`use_muon`). `MuonClip.for_model(model)` builds the standard split (SPEC §7):

* Muon  — every 2-D weight inside the decoder layers, each matrix on its own: attention projections, dense and
          shared-expert MLPs, every routed expert's gate/up/down, the router weight.
* AdamW — the token embedding and `lm_head` (2-D, but they index tokens, not hidden features: Moonlight keeps
          them on AdamW), with weight decay; RMSNorm weights and any biases, without weight decay.

With `match_rms_adamw` scaling both rules share one learning rate and weight decay (Moonlight). The router's
`e_score_correction_bias` is a buffer moved by `balance.py`, not by this optimizer.

QK-Clip: `step(max_logits=stats.max_logits)` applies it after the update when the optimizer was built with a
threshold (`qk_clip_tau`, 100 as in K2; None switches it off); the factors γ per layer are kept in
`last_clip_factors` for logging.

Newton–Schulz runs in bfloat16 as in K2; `ns_dtype="float32"` is for CPUs without bf16 matrix units, where
bf16 matmuls are emulated and ~10× slower (the iteration is the same; only the rounding differs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from kimi_k2.model.attention import MLA
from kimi_k2.train.muon import NS_STEPS, adamw_update, muon_update
from kimi_k2.train.qk_clip import attention_layers, qk_clip_

_ADAMW_MATRICES = ("model.embed_tokens.weight", "lm_head.weight")
NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def is_muon_param(name: str, param: torch.Tensor) -> bool:
    """True for the 2-D hidden weight matrices Muon should update (names are the checkpoint's tensor names)."""
    return param.ndim == 2 and name not in _ADAMW_MATRICES


def param_groups(model: nn.Module, *, use_muon: bool = True, weight_decay: float = 0.1) -> list[dict[str, Any]]:
    """Named param groups for `MuonClip`: muon (2-D hidden), adamw (embedding, lm_head), adamw_no_decay (1-D).

    With `use_muon=False` every matrix goes to AdamW (the plain AdamW baseline with the same grouping).
    """
    muon, adamw, no_decay = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2:
            no_decay.append(param)
        elif use_muon and is_muon_param(name, param):
            muon.append(param)
        else:
            adamw.append(param)
    groups = [
        {"name": "muon", "params": muon, "use_muon": True, "weight_decay": weight_decay},
        {"name": "adamw", "params": adamw, "use_muon": False, "weight_decay": weight_decay},
        {"name": "adamw_no_decay", "params": no_decay, "use_muon": False, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


class MuonClip(torch.optim.Optimizer):
    """Muon + AdamW + QK-Clip. Defaults are K2's (lr 2e-4, weight decay 0.1, momentum 0.95, τ = 100).

    `params` is a list of tensors (all Muon) or of groups with a `use_muon` flag (see `param_groups`); groups may
    override `lr`, `weight_decay`, `momentum`, `betas`. QK-Clip needs the MLA modules: pass `attention`, or build
    with `MuonClip.for_model`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 2e-4,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = NS_STEPS,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        qk_clip_tau: float | None = 100.0,
        attention: Sequence[MLA] = (),
        ns_dtype: str = "bfloat16",
    ) -> None:
        if lr < 0:
            raise ValueError(f"learning rate lr={lr} must be >= 0")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum={momentum} must be in [0, 1)")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0")
        if qk_clip_tau is not None and qk_clip_tau <= 0:
            raise ValueError(f"qk_clip_tau={qk_clip_tau} must be positive (or None to switch QK-Clip off)")
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype={ns_dtype!r}: choose one of {', '.join(NS_DTYPES)}")
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
            ns_dtype=ns_dtype, betas=betas, eps=eps, use_muon=True,
        )  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"]:
                for p in group["params"]:
                    if p.ndim != 2:
                        raise ValueError(
                            f"param group {group.get('name', '?')!r}: Muon updates 2-D matrices only, found a "
                            f"parameter of shape {list(p.shape)} (put it in a group with use_muon=False)"
                        )
        self.qk_clip_tau = qk_clip_tau
        self.attention = list(attention)
        self.last_clip_factors: list[torch.Tensor] = []

    @classmethod
    def for_model(
        cls, model: nn.Module, *, use_muon: bool = True, weight_decay: float = 0.1, **kwargs: Any
    ) -> MuonClip:
        """The standard K2 split of a model's parameters (see the module docstring), QK-Clip wired to its MLA."""
        groups = param_groups(model, use_muon=use_muon, weight_decay=weight_decay)
        return cls(groups, weight_decay=weight_decay, attention=attention_layers(model), **kwargs)

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], float] | None = None,
        *,
        max_logits: Sequence[torch.Tensor] | None = None,
    ) -> float | None:
        """Update every parameter with a gradient, then QK-Clip from `max_logits` (one [H] per layer) if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MuonClip does not support sparse gradients")
                state = self.state[p]
                if group["use_muon"]:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    muon_update(
                        p, p.grad, state["momentum_buffer"], lr=group["lr"], weight_decay=group["weight_decay"],
                        momentum=group["momentum"], nesterov=group["nesterov"], ns_steps=group["ns_steps"],
                        ns_dtype=NS_DTYPES[group["ns_dtype"]],
                    )  # fmt: skip
                else:
                    if "step" not in state:
                        state["step"] = 0
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    state["step"] += 1
                    adamw_update(
                        p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], lr=group["lr"],
                        weight_decay=group["weight_decay"], betas=group["betas"], eps=group["eps"],
                    )  # fmt: skip
        self.last_clip_factors = []
        if max_logits is not None and self.qk_clip_tau is not None:
            if not self.attention:
                raise ValueError("QK-Clip needs the model's attention layers: build with MuonClip.for_model(model)")
            self.last_clip_factors = qk_clip_(self.attention, max_logits, self.qk_clip_tau)
        return loss

"""Give a model (built on the meta device) this rank's shapes, before its weights are loaded.

The model's code stays the single-device code: attention runs `n_heads / N` heads, a column-split projection has
`out / N` rows, a row-split one `in / N` inputs, the embedding and `lm_head` `V / N` rows; with expert
parallelism another rank's routed expert is an `ExpertElsewhere` with no parameters. The reduces these shards
need are the runner's (`kimi_k2.engine.model_runner`): the model's own `forward` is the single-process reference
and refuses to run sharded. The layout travels with the model as `model.parallel` (`parallel_of`).
"""

from __future__ import annotations

from torch import nn

from kimi_k2.model.attention import MLA
from kimi_k2.model.linear import Linear
from kimi_k2.model.moe import MoE
from kimi_k2.model.transformer import KimiK2ForCausalLM
from kimi_k2.parallel.config import SINGLE, ParallelConfig
from kimi_k2.parallel.layout import shard_of


class ExpertElsewhere(nn.Module):
    """A routed expert that another rank holds (expert parallelism): no parameters, never called."""

    def __init__(self, owner: int) -> None:
        super().__init__()
        self.owner = owner

    def forward(self, *_: object) -> None:
        raise RuntimeError(f"this routed expert is held by rank {self.owner}; the runner combines across ranks")


def parallel_of(model: nn.Module) -> ParallelConfig:
    """The layout a model was sharded with (`shard_model`), SINGLE for a whole model."""
    return getattr(model, "parallel", SINGLE)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def shard_model(model: KimiK2ForCausalLM, pc: ParallelConfig) -> KimiK2ForCausalLM:
    """Replace, in place, every sharded module of a meta-device model by one of this rank's shape."""
    cfg = model.config
    pc.check(cfg)
    model.parallel = pc
    if not pc.is_parallel:
        return model
    if cfg.attention_bias:
        raise ValueError("tensor parallelism of a model with attention_bias=true is not supported (o_proj's bias "
                         "would be added once per rank)")
    for name, module in list(model.named_modules()):
        if isinstance(module, MoE) and pc.expert_parallel:
            held = pc.experts(cfg)
            for e in range(cfg.n_routed_experts):
                if e not in held:
                    module.experts[e] = ExpertElsewhere(pc.expert_owner(cfg, e))
        elif isinstance(module, MLA):
            module.n_heads = cfg.num_attention_heads // pc.world_size
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            continue
        shard = shard_of(f"{name}.weight", cfg, pc)
        if shard is None or shard.dim is None:
            continue
        weight = module.weight
        if isinstance(module, nn.Embedding):
            new: nn.Module = nn.Embedding(shard.size, module.embedding_dim, device=weight.device, dtype=weight.dtype)
        else:
            out_features = shard.size if shard.dim == 0 else module.out_features
            in_features = shard.size if shard.dim == 1 else module.in_features
            new = Linear(in_features, out_features, bias=module.bias is not None, device=weight.device, dtype=weight.dtype)
        _replace(model, name, new)
    return model

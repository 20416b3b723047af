"""A model sharded by the engine over N ranks (`kimi_k2.parallel`): the bytes each rank holds, the collectives a
step costs, and the command that launches the layout.

Per rank (`rank_plan`), with the engine's own rules (`planner/cpu.py` for what is kept as stored):
* tensor-split weights (query and `kv_b` heads, `o_proj`, dense MLP and shared expert, the embedding and
  `lm_head`'s vocabulary) hold 1/N of their rows or columns, scale blocks cut with them; a quantized shard that
  does not fall on its format's block boundaries (FP8 128, INT4 groups of 32 inputs) is held dequantized in the
  compute dtype, as the loader does;
* replicated weights (`q_a_proj`, `kv_a_proj_with_mqa`, norms, the router) are whole on every rank;
* routed experts: E/N whole experts with expert parallelism, else 1/N of every expert;
* the KV cache is NOT split: MLA caches one latent per token for all heads, so every rank keeps the whole
  latent of every sequence (`kv_bytes` is each rank's, the same as one process's).

Per step (`step_collectives`): one broadcast of the step's metadata (a size and a payload), one all-reduce of
the embedding rows, two all-reduces per layer (after `o_proj`; after the MLP or MoE, which also carries the
shared expert), one gather of the sampled rows' logits; the all-to-all combine adds one all-gather of counts and
three all-to-alls per MoE layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kimi_k2.config import ModelConfig
from kimi_k2.planner.cpu import _stored
from kimi_k2.planner.formats import resolve_format
from kimi_k2.planner.tensors import TensorSpec, model_tensors

FP8_BLOCK, INT4_GROUP = 128, 32


@dataclass(frozen=True, slots=True)
class RankPlan:
    world_size: int
    expert_parallel: bool
    fmt: str
    weight_bytes: int  # the tensors one rank holds (the largest share: all ranks hold the same)
    routed_bytes: int  # of which routed experts
    kv_bytes: int  # the KV cache of one rank: the whole latent cache

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes


def _split_dim(t: TensorSpec) -> int:
    """The dimension tensor parallelism cuts: inputs for the row-parallel projections, else outputs."""
    return 1 if t.name.endswith(("o_proj.weight", "down_proj.weight")) else 0


def _quantized(t: TensorSpec, fmt: str) -> bool:
    return t.kind == "linear" and (fmt == "fp8" or (fmt == "int4" and t.component == "routed_experts"))


def _share(t: TensorSpec, fmt: str, compute_bytes: int, n: int) -> int:
    """Bytes of one rank's 1/n of one copy of `t`."""
    dim = _split_dim(t)
    local = list(t.shape)
    local[dim] = -(-local[dim] // n) if t.kind in ("embedding", "lm_head") else local[dim] // n  # vocab: ceil(V/N)
    unit = FP8_BLOCK if fmt == "fp8" else (INT4_GROUP if dim == 1 else 1)
    if _quantized(t, fmt) and n > 1 and local[dim] % unit:
        return compute_bytes * math.prod(local)  # loaded dequantized
    stored, converted = _stored(replace(t, shape=tuple(local)), fmt, compute_bytes)
    return stored + converted


def rank_plan(
    cfg: ModelConfig, fmt: str, world_size: int, *, expert_parallel: bool = False, compute_bytes: int = 4, kv_bytes: int = 0
) -> RankPlan:
    """What one of `world_size` ranks holds for `cfg` stored in `fmt` (fp32, bf16, fp8 or int4, kept as stored)."""
    fmt = resolve_format(fmt)
    if fmt not in ("fp32", "bf16", "fp8", "int4"):
        raise ValueError(f"the engine keeps fp32, bf16, fp8 and int4 checkpoints as stored, not {fmt!r}")
    n = world_size
    held = routed = 0
    for t in model_tensors(cfg):
        if t.component == "routed_experts":
            if expert_parallel:
                stored, converted = _stored(t, fmt, compute_bytes)
                part = (t.count // n) * (stored + converted)
            else:
                part = t.count * _share(t, fmt, compute_bytes, n)
            routed += part
        elif t.tp_sharded:
            part = t.count * _share(t, fmt, compute_bytes, n)
        else:
            stored, converted = _stored(t, fmt, compute_bytes)
            part = t.count * (stored + converted)
        held += part
        if t.name.endswith("kv_b_proj.weight"):  # the runner's absorbed halves (and a converted copy), this rank's heads
            local = t.numel // n
            held += compute_bytes * local
            if _share(t, fmt, compute_bytes, n) != compute_bytes * local:
                held += compute_bytes * local
    return RankPlan(n, expert_parallel, fmt, held, routed, kv_bytes)


def step_collectives(
    cfg: ModelConfig, world_size: int, *, tokens: int, sampled: int, moe_combine: str = "allreduce"
) -> dict[str, tuple[int, int]]:
    """(calls, bytes sent by one rank) per collective kind for one step of `tokens` packed tokens of which
    `sampled` rows get logits; all-to-all bytes are not counted (they depend on the routing). The metadata
    broadcast's payload size is not known here either: its bytes are left out (its calls are counted)."""
    layers, moe_layers = cfg.num_hidden_layers, cfg.num_moe_layers
    row = tokens * cfg.hidden_size * 4  # float32 reductions
    out = {
        "broadcast": (2, 0),
        "all_reduce": (1 + 2 * layers, row * (1 + 2 * layers)),
        "gather": (1, sampled * -(-cfg.vocab_size // world_size) * 4) if sampled else (0, 0),
    }
    if moe_combine == "alltoall":
        out["all_gather"] = (moe_layers, moe_layers * world_size * 8)
        out["all_to_all"] = (3 * moe_layers, 0)
    return out


def launch_command(model: str, world_size: int, *, expert_parallel: bool, gpus_per_host: int = 8, device: str = "cuda") -> str:
    """The command that serves `model` on `world_size` ranks: one host starts its own workers; more hosts run the
    same entry point under torchrun on each (`--node-rank` 0..H-1, host 0's address as the rendezvous)."""
    flags = f"--model {model} --tensor-parallel-size {world_size}" + (" --enable-expert-parallel" if expert_parallel else "")
    flags += f" --device {device}"
    if world_size <= gpus_per_host:
        return f"kimi-k2 serve {flags}"
    hosts = math.ceil(world_size / gpus_per_host)
    return (f"torchrun --nnodes {hosts} --nproc-per-node {gpus_per_host} --node-rank $NODE_RANK "
            f"--master-addr $HOST0 --master-port 29500 -m kimi_k2.cli serve {flags}")



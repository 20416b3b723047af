"""One machine, experts on the CPU: what the engine holds in RAM for a model loaded as stored, and how fast its
memory can feed a decode token.

The engine loads a checkpoint with its Linear weights and its embedding as stored (`LLM(path)`: FP8 / INT4 kept,
bf16 weights bf16) and everything else in the compute dtype (`compute_bytes`: 4 for float32): norms and the
router; the router's correction bias stays float32. The fast runner adds, per layer, `kv_b_proj` split into
its absorbed-attention halves in the compute dtype (`w_uk`, `w_uv`), plus `kv_b_proj` itself in the compute
dtype when it is stored otherwise. These are the formulas `tests/test_planner_cpu.py` checks against the bytes
the engine really holds.

Memory-mapped (the default), the Linear weights are pages of the checkpoint files: the OS page cache holds what
decode touches, so the process's own memory is only `converted_bytes` + the KV cache, and a model larger than RAM
still runs — at the speed of the disk for the experts that do not stay cached. A decode token reads every
non-routed weight once, `num_experts_per_tok` experts per MoE layer, `lm_head` and one embedding row:
`token_bytes`, which over a RAM bandwidth bounds batch-1 decode.
"""

from __future__ import annotations

from dataclasses import dataclass

from kimi_k2.config import ModelConfig
from kimi_k2.planner.formats import FORMATS, resolve_format
from kimi_k2.planner.tensors import TensorSpec, model_tensors

DEFAULT_RAM_UTIL = 0.9  # usable fraction of RAM (the OS, Python and the allocator keep the rest)


@dataclass(frozen=True, slots=True)
class CpuPlan:
    fmt: str
    compute_bytes: int
    linear_bytes: int  # Linear weights and the embedding as stored (mappable), routed experts included
    routed_bytes: int  # of which routed experts
    converted_bytes: int  # norms, routers, the runner's kv_b splits: always in the process's memory
    token_bytes: int  # weight bytes one batch-1 decode token reads
    kv_bytes: int
    ram_bytes: int | None
    ram_bandwidth: float  # bytes/s

    @property
    def resident_bytes(self) -> int:
        """Weights the engine holds when every tensor is read into RAM (`mmap=False`)."""
        return self.linear_bytes + self.converted_bytes

    @property
    def mapped_hot_bytes(self) -> int:
        """What decode keeps hot when memory-mapped: every weight but the routed experts, which the page cache
        holds as far as RAM allows."""
        return self.resident_bytes - self.routed_bytes

    @property
    def fits_in_ram(self) -> bool | None:
        """The whole model in RAM (read in, or fully cached when mapped), with the KV cache."""
        if self.ram_bytes is None:
            return None
        return self.resident_bytes + self.kv_bytes <= DEFAULT_RAM_UTIL * self.ram_bytes

    @property
    def runs_mapped(self) -> bool | None:
        """Memory-mapped with everything but the routed experts hot (experts then come from the disk)."""
        if self.ram_bytes is None:
            return None
        return self.mapped_hot_bytes + self.kv_bytes <= DEFAULT_RAM_UTIL * self.ram_bytes

    @property
    def decode_tokens_per_s_bound(self) -> float:
        return self.ram_bandwidth / self.token_bytes


def _stored(t: TensorSpec, fmt: str, compute_bytes: int) -> tuple[int, int]:
    """(bytes as stored if a Linear the engine keeps as stored, bytes converted to the compute dtype) of one copy."""
    if t.kind in ("linear", "lm_head", "embedding"):  # lm_head and the embedding are bf16 in FP8 / INT4 layouts
        return FORMATS[fmt](t), 0
    if t.kind == "score_bias":
        return 0, 4 * t.numel
    return 0, compute_bytes * t.numel


def cpu_plan(
    cfg: ModelConfig,
    fmt: str,
    *,
    compute_bytes: int = 4,
    kv_bytes: int = 0,
    ram_bytes: int | None = None,
    ram_bandwidth: float,
) -> CpuPlan:
    """The engine's memory and the decode bound for `cfg` stored in `fmt` (a planner format: fp8, int4, bf16, ...)."""
    fmt = resolve_format(fmt)
    if fmt not in ("fp32", "bf16", "fp8", "int4"):
        raise ValueError(f"the engine keeps fp32, bf16, fp8 and int4 checkpoints as stored, not {fmt!r}")
    linear = routed = converted = token = 0
    for t in model_tensors(cfg):
        stored, conv = _stored(t, fmt, compute_bytes)
        linear += t.count * stored
        converted += t.count * conv
        if t.component == "routed_experts":
            routed += t.count * stored
            token += cfg.num_experts_per_tok * stored
        elif t.kind == "embedding":
            token += stored // t.shape[0]  # one row
        elif t.kind in ("linear", "lm_head"):
            token += stored
        if t.name.endswith("kv_b_proj.weight"):
            converted += compute_bytes * t.numel  # w_uk and w_uv: the two halves of kv_b in the compute dtype
            if stored != compute_bytes * t.numel:
                converted += compute_bytes * t.numel  # kv_b itself, converted once for prefill's naive path
    return CpuPlan(fmt, compute_bytes, linear, routed, converted, token, kv_bytes, ram_bytes, ram_bandwidth)

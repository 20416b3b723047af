"""One plan: parameters, weight and KV bytes, fit on a GPU count, minimum GPUs, offload, speed bounds.

`make_plan` gathers the pure functions of the other planner modules for one (model, format, context,
batch, GPU, count, split) and `Plan.as_dict` is the stable JSON of `kimi-k2 plan --json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kimi_k2.config import ModelConfig, preset
from kimi_k2.planner.fit import (
    DEFAULT_MEM_UTIL,
    DEFAULT_PREFILL_CHUNK,
    Fit,
    Offload,
    Workload,
    fit,
    layer_bytes,
    min_gpus,
    offload_plan,
    overhead_bytes,
    usable_bytes,
)
from kimi_k2.planner.formats import PUBLISHED_SIZES, PublishedSize, resolve_format, weight_bytes_by_component
from kimi_k2.planner.hardware import GPU
from kimi_k2.planner.kv import kv_bytes_per_token, kv_dtype_bytes, per_head_kv_bytes_per_token
from kimi_k2.planner.params import ParamCounts, count_params
from kimi_k2.planner.ranks import launch_command
from kimi_k2.planner.speed import (
    DEFAULT_RAM_BANDWIDTH,
    decode_tokens_per_s_bound,
    offload_decode_tokens_per_s_bound,
    prefill_tokens_per_s_bound,
)

DEFAULT_FORMAT = "fp8"  # what Moonshot ships Kimi-K2-Instruct in


@dataclass(frozen=True, slots=True)
class Plan:
    model: str
    cfg: ModelConfig
    weights: str
    context: int
    batch: int
    kv_dtype: str
    device: GPU
    split: str
    mem_util: float
    ram_bandwidth: float
    params: ParamCounts
    weight_bytes_by_component: dict[str, int]
    kv_bytes_per_token: int
    kv_bytes_per_token_per_head: int
    kv_bytes: int
    overhead_bytes_per_gpu: int
    fit: Fit
    min_gpus: int | None
    offload: Offload
    decode_tokens_per_s_bound: float | None
    prefill_tokens_per_s_bound: float | None
    offload_decode_tokens_per_s_bound: float
    published_sizes: tuple[PublishedSize, ...]

    @property
    def weight_bytes(self) -> int:
        return sum(self.weight_bytes_by_component.values())

    @property
    def weights_fit(self) -> bool:
        """The weights alone fit within the usable memory (KV and overhead aside)."""
        return self.fit.load is not None and self.fit.load.weights <= self.fit.usable_bytes_per_gpu

    @property
    def launch(self) -> str | None:
        """The command that runs the recommended layout on this engine: tensor parallelism over the GPUs the plan
        fits on (these GPUs if they fit, else the minimum), with expert parallelism for an MoE model (whole experts
        per rank). None when no GPU count fits. The engine shards as the `tp` split counts; the `ep` (data-parallel
        attention) and `pp` splits describe other engines' layouts."""
        n = self.fit.gpus if self.fit.fits and self.split == "tp" else self.min_gpus if self.split == "tp" else None
        if n is None:
            return None
        from kimi_k2.config import PRESETS

        model = "PATH/TO/CHECKPOINT" if self.model in PRESETS else self.model
        return launch_command(model, n, expert_parallel=self.cfg.n_routed_experts > 0)

    def as_dict(self) -> dict[str, Any]:
        load = self.fit.load
        return {
            "model": self.model,
            "weights": self.weights,
            "context": self.context,
            "batch": self.batch,
            "kv_dtype": self.kv_dtype,
            "total_params": self.params.total,
            "active_params": self.params.active,
            "params": self.params.as_dict(),
            "weight_bytes": self.weight_bytes,
            "weight_bytes_by_component": dict(self.weight_bytes_by_component),
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_bytes_per_token_per_head": self.kv_bytes_per_token_per_head,
            "kv_bytes": self.kv_bytes,
            "gpu": {
                "key": self.device.key,
                "name": self.device.name,
                "memory_bytes": self.device.memory_bytes,
                "bandwidth_bytes_per_s": self.device.bandwidth,
                "bf16_flops": self.device.bf16_flops,
                "fp8_flops": self.device.fp8_flops,
                "fp8": self.device.fp8,
            },
            "gpus": self.fit.gpus,
            "split": self.split,
            "mem_util": self.mem_util,
            "overhead_bytes_per_gpu": self.overhead_bytes_per_gpu,
            "per_gpu": None
            if load is None
            else {
                "usable_bytes": self.fit.usable_bytes_per_gpu,
                "weight_bytes": load.weights,
                "kv_bytes": load.kv,
                "overhead_bytes": load.overhead,
                "headroom_bytes": self.fit.headroom_bytes_per_gpu,
            },
            "fits": self.fit.fits,
            "weights_fit": self.weights_fit,
            "fit_error": self.fit.error,
            "min_gpus": self.min_gpus,
            "launch": self.launch,
            "offload": {
                "ram_bytes": self.offload.ram_bytes,
                "vram_bytes": self.offload.vram_bytes,
                "fits_one_gpu": self.offload.fits_one_gpu,
                "ram_bandwidth_bytes_per_s": self.ram_bandwidth,
                "decode_tokens_per_s_bound": self.offload_decode_tokens_per_s_bound,
            },
            "decode_tokens_per_s_bound": self.decode_tokens_per_s_bound,
            "prefill_tokens_per_s_bound": self.prefill_tokens_per_s_bound,
            "published_sizes": [
                {"name": p.name, "weights": p.fmt, "bytes": p.bytes, "source": p.source} for p in self.published_sizes
            ],
        }


def is_k2_shape(cfg: ModelConfig) -> bool:
    """Same weights as Kimi-K2 (Instruct, 0905, Thinking differ only in rope/quantization): compare sizes."""
    return count_params(cfg) == count_params(preset("kimi-k2"))


def make_plan(
    cfg: ModelConfig,
    device: GPU,
    *,
    model: str = "kimi-k2",
    weights: str = DEFAULT_FORMAT,
    context: int | None = None,
    batch: int = 1,
    gpus: int = 8,
    split: str = "tp",
    kv_dtype: str = "bf16",
    mem_util: float = DEFAULT_MEM_UTIL,
    ram_bandwidth: float = DEFAULT_RAM_BANDWIDTH,
    chunk_tokens: int = DEFAULT_PREFILL_CHUNK,
) -> Plan:
    """Everything `kimi-k2 plan` reports. `context` defaults to the model's max_position_embeddings."""
    fmt = resolve_format(weights)
    if ram_bandwidth <= 0:
        raise ValueError(f"--ram-bandwidth={ram_bandwidth}: must be positive")
    usable_bytes(device, mem_util)  # validates mem_util
    kv_b = kv_dtype_bytes(kv_dtype)
    work = Workload(cfg.max_position_embeddings if context is None else context, batch, kv_b, chunk_tokens)
    layers = layer_bytes(cfg, fmt)
    result = fit(cfg, layers, device, gpus, work, split=split, mem_util=mem_util)
    published = tuple(p for p in PUBLISHED_SIZES if p.fmt == fmt) if is_k2_shape(cfg) else ()
    return Plan(
        model=model,
        cfg=cfg,
        weights=fmt,
        context=work.context,
        batch=batch,
        kv_dtype=kv_dtype.lower(),
        device=device,
        split=split,
        mem_util=mem_util,
        ram_bandwidth=ram_bandwidth,
        params=count_params(cfg),
        weight_bytes_by_component=weight_bytes_by_component(cfg, fmt),
        kv_bytes_per_token=kv_bytes_per_token(cfg, kv_b),
        kv_bytes_per_token_per_head=per_head_kv_bytes_per_token(cfg, kv_b),
        kv_bytes=work.kv_bytes(cfg),
        overhead_bytes_per_gpu=overhead_bytes(cfg, chunk_tokens, batch),
        fit=result,
        min_gpus=min_gpus(cfg, layers, device, work, split=split, mem_util=mem_util),
        offload=offload_plan(cfg, layers, device, work, mem_util=mem_util),
        decode_tokens_per_s_bound=None
        if result.error
        else decode_tokens_per_s_bound(cfg, layers, device, work, split=split, n=gpus),
        prefill_tokens_per_s_bound=None
        if result.error
        else prefill_tokens_per_s_bound(cfg, device, fmt, n=gpus, prompt_tokens=work.context),
        offload_decode_tokens_per_s_bound=offload_decode_tokens_per_s_bound(cfg, layers, device, work, ram_bandwidth),
        published_sizes=published,
    )

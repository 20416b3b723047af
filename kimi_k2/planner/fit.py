"""Does it fit: per-GPU memory under a parallel split, the minimum GPU count, and a CPU-offload plan.

Per GPU the planner requires

    weights_on_gpu + kv_on_gpu + overhead  <=  mem_util × memory          (headroom = the difference)

* `mem_util` (default 0.90, like vLLM's `gpu_memory_utilization`) leaves room for allocator fragmentation,
  other processes and the memory the device reports but will not give (ECC, driver reservations).
* `overhead` = `RUNTIME_OVERHEAD_BYTES` (2 GiB: CUDA context, cuBLAS/NCCL workspaces, captured CUDA
  graphs) + the activation workspace of one prefill chunk (`activation_bytes`: bf16 hidden states, q/k/v,
  the top-k expert dispatch, and fp32 logits of the batch's last tokens), counted in full on every GPU.
* The KV cache is the requested `context` × `batch`, so "fits" means the requested load is served, not just
  that the weights load.

Splits (how each tensor lands on a GPU; `tensors.TensorSpec.tp_sharded` says which ones TP shards):

* `tp` (tensor parallel): sharded tensors / n, replicated ones (MLA down-projections, norms, router) whole;
  the MLA latent cache is shared by all heads, so every rank holds the whole KV cache. n must divide
  num_attention_heads.
* `ep` (expert parallel with data-parallel attention, SGLang's DP-attention + EP): each GPU holds
  ceil(E/n) experts per MoE layer and a full copy of everything else; sequences are spread over the GPUs, so
  each holds the KV of ceil(batch/n) of them.
* `pp` (pipeline / llama.cpp layer split): contiguous layers per GPU, balanced to minimise the largest stage,
  embedding on the first, lm_head on the last; each GPU caches only its layers' KV. n <= num_hidden_layers.

The offload plan (KTransformers, llama.cpp `-ot exps=CPU`) keeps the routed experts in CPU RAM and the rest,
the KV cache and the overhead on one GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kimi_k2.config import ModelConfig
from kimi_k2.planner.formats import tensor_bytes
from kimi_k2.planner.hardware import GIB, GPU
from kimi_k2.planner.kv import kv_bytes_per_token
from kimi_k2.planner.tensors import PRE_LAYERS, model_tensors

DEFAULT_MEM_UTIL = 0.90
RUNTIME_OVERHEAD_BYTES = 2 * GIB
DEFAULT_PREFILL_CHUNK = 8192  # tokens per prefill step (vLLM's max_num_batched_tokens default for long context)
SPLITS = ("tp", "ep", "pp")
MAX_GPUS = 1024


@dataclass(frozen=True, slots=True)
class LayerBytes:
    """Weight bytes of one pipeline item: the embedding, a transformer layer, or the final norm + lm_head."""

    layer: int
    replicated: int  # every TP rank holds these whole
    sharded: int  # split over TP ranks (without the embedding table and routed experts)
    embedding: int  # the input embedding table (TP-sharded; decode reads only a row per token)
    expert: int  # ONE routed expert (gate + up + down)
    experts: int  # routed experts in this layer

    @property
    def total(self) -> int:
        return self.replicated + self.sharded + self.embedding + self.expert * self.experts


def layer_bytes(cfg: ModelConfig, fmt: str) -> list[LayerBytes]:
    """Weight bytes per item in model order: [embedding, layer 0, ..., layer L-1, final norm + lm_head]."""
    order = [PRE_LAYERS, *range(cfg.num_hidden_layers), cfg.num_hidden_layers]
    acc = {i: {"replicated": 0, "sharded": 0, "embedding": 0, "expert": 0, "experts": 0} for i in order}
    for t in model_tensors(cfg):
        a = acc[t.layer]
        if t.component == "routed_experts":
            a["expert"] += tensor_bytes(t, fmt) // t.count
            a["experts"] = t.count
        elif t.kind == "embedding":
            a["embedding"] += tensor_bytes(t, fmt)
        else:
            a["sharded" if t.tp_sharded else "replicated"] += tensor_bytes(t, fmt)
    return [LayerBytes(i, **acc[i]) for i in order]


def activation_bytes(cfg: ModelConfig, chunk_tokens: int = DEFAULT_PREFILL_CHUNK, batch: int = 1) -> int:
    """Peak activation workspace of one prefill chunk (bf16) plus fp32 logits for `batch` last tokens.

    Per token: residual, normed input, attention output and MLP output (4 × hidden), the expanded per-head
    q/k/v of the naive prefill path (H × (qk_head_dim + qk_head_dim + v_head_dim)) and the dispatched copies
    and SwiGLU intermediates of its top-k experts (K × (hidden + 3 × moe_intermediate)).
    """
    h = cfg.num_attention_heads
    if cfg.n_routed_experts:
        mlp = cfg.num_experts_per_tok * (cfg.hidden_size + 3 * cfg.moe_intermediate_size)
    else:
        mlp = 3 * cfg.intermediate_size
    per_token = 2 * (4 * cfg.hidden_size + h * (2 * cfg.qk_head_dim + cfg.v_head_dim) + mlp)
    return chunk_tokens * per_token + 4 * batch * cfg.vocab_size


def overhead_bytes(cfg: ModelConfig, chunk_tokens: int = DEFAULT_PREFILL_CHUNK, batch: int = 1) -> int:
    """The per-GPU overhead term: runtime (context, workspaces, graphs) + activations."""
    return RUNTIME_OVERHEAD_BYTES + activation_bytes(cfg, chunk_tokens, batch)


def split_error(cfg: ModelConfig, split: str, n: int) -> str | None:
    """Why `n` GPUs cannot run `split` for this model, or None."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for --split; known: {', '.join(SPLITS)}")
    if n < 1:
        return f"--gpus={n}: need at least one GPU"
    if split == "tp" and cfg.num_attention_heads % n:
        return f"tensor parallelism needs the GPU count to divide num_attention_heads={cfg.num_attention_heads}"
    if split == "pp" and n > cfg.num_hidden_layers:
        return f"a layer split cannot use more GPUs than num_hidden_layers={cfg.num_hidden_layers}"
    if split == "ep" and n > max(cfg.n_routed_experts, 1):
        return f"expert parallelism cannot use more GPUs than n_routed_experts={cfg.n_routed_experts}"
    return None


def pipeline_stages(items: list[int], n: int) -> list[tuple[int, int]]:
    """Split `items` into at most n contiguous [start, end) ranges minimising the largest sum."""

    def greedy(cap: int) -> list[tuple[int, int]] | None:
        stages, start, total = [], 0, 0
        for i, size in enumerate(items):
            if size > cap:
                return None
            if total + size > cap:
                stages.append((start, i))
                start, total = i, 0
            total += size
        stages.append((start, len(items)))
        return stages if len(stages) <= n else None

    lo, hi = max(items), sum(items)
    while lo < hi:  # the smallest capacity that packs into n stages
        mid = (lo + hi) // 2
        if greedy(mid) is None:
            lo = mid + 1
        else:
            hi = mid
    stages = greedy(lo)
    assert stages is not None
    return stages


@dataclass(frozen=True, slots=True)
class Workload:
    """What must be served at once: `batch` sequences of `context` tokens, cached in `kv_dtype_bytes`."""

    context: int
    batch: int = 1
    kv_dtype_bytes: int = 2
    chunk_tokens: int = DEFAULT_PREFILL_CHUNK  # prefill step size: sizes the activation overhead

    def __post_init__(self) -> None:
        for flag, value in (("--context", self.context), ("--batch", self.batch), ("--prefill-chunk", self.chunk_tokens)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{flag}={value}: must be a positive integer")
        if self.kv_dtype_bytes <= 0:
            raise ValueError(f"kv_dtype_bytes={self.kv_dtype_bytes}: must be positive")

    def kv_bytes(self, cfg: ModelConfig, sequences: int | None = None, num_layers: int | None = None) -> int:
        """KV of `sequences` (default: the whole batch) over `num_layers` (default: all)."""
        seqs = self.batch if sequences is None else sequences
        return self.context * seqs * kv_bytes_per_token(cfg, self.kv_dtype_bytes, num_layers=num_layers)


@dataclass(frozen=True, slots=True)
class GpuLoad:
    """Memory of the most loaded GPU."""

    weights: int
    kv: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.overhead


def gpu_load(cfg: ModelConfig, layers: list[LayerBytes], split: str, n: int, work: Workload) -> GpuLoad:
    """Weights, KV and overhead on the most loaded of `n` GPUs (the split must be valid for n)."""
    overhead = overhead_bytes(cfg, work.chunk_tokens, work.batch)
    if split == "tp":
        weights = sum(b.replicated + math.ceil((b.sharded + b.embedding + b.expert * b.experts) / n) for b in layers)
        return GpuLoad(weights, work.kv_bytes(cfg), overhead)
    if split == "ep":
        weights = sum(b.replicated + b.sharded + b.embedding + b.expert * math.ceil(b.experts / n) for b in layers)
        return GpuLoad(weights, work.kv_bytes(cfg, math.ceil(work.batch / n)), overhead)
    layer_kv = work.kv_bytes(cfg, num_layers=1)
    items = _pipeline_items([b.total for b in layers])
    kv_items = _pipeline_items([0 if b.layer in (PRE_LAYERS, cfg.num_hidden_layers) else layer_kv for b in layers])
    stages = pipeline_stages([w + k for w, k in zip(items, kv_items)], n)
    s, e = max(stages, key=lambda r: sum(items[r[0] : r[1]]) + sum(kv_items[r[0] : r[1]]))
    return GpuLoad(sum(items[s:e]), sum(kv_items[s:e]), overhead)


def _pipeline_items(values: list[int]) -> list[int]:
    """Fold the embedding into the first layer and the head into the last: stages never hold them alone."""
    if len(values) <= 3:
        return [sum(values)]
    return [values[0] + values[1], *values[2:-2], values[-2] + values[-1]]


@dataclass(frozen=True, slots=True)
class Fit:
    split: str
    gpus: int
    usable_bytes_per_gpu: int
    load: GpuLoad | None  # None when the split is impossible for this GPU count
    error: str | None = None

    @property
    def headroom_bytes_per_gpu(self) -> int | None:
        return None if self.load is None else self.usable_bytes_per_gpu - self.load.total

    @property
    def fits(self) -> bool:
        return self.load is not None and self.usable_bytes_per_gpu >= self.load.total


def usable_bytes(device: GPU, mem_util: float = DEFAULT_MEM_UTIL) -> int:
    if not 0 < mem_util <= 1:
        raise ValueError(f"--mem-util={mem_util}: must be in (0, 1]")
    return int(device.memory_bytes * mem_util)


def fit(
    cfg: ModelConfig,
    layers: list[LayerBytes],
    device: GPU,
    n: int,
    work: Workload,
    *,
    split: str = "tp",
    mem_util: float = DEFAULT_MEM_UTIL,
) -> Fit:
    """Whether `n` GPUs of `device` serve `work` under `split`."""
    usable = usable_bytes(device, mem_util)
    error = split_error(cfg, split, n)
    if error:
        return Fit(split, n, usable, None, error)
    return Fit(split, n, usable, gpu_load(cfg, layers, split, n, work))


def max_gpus(cfg: ModelConfig, split: str) -> int:
    """The largest count the split can use: one head, one layer or one expert per GPU."""
    limit = {"tp": cfg.num_attention_heads, "pp": cfg.num_hidden_layers, "ep": max(cfg.n_routed_experts, 1)}[split]
    return min(limit, MAX_GPUS)


def min_gpus(
    cfg: ModelConfig,
    layers: list[LayerBytes],
    device: GPU,
    work: Workload,
    *,
    split: str = "tp",
    mem_util: float = DEFAULT_MEM_UTIL,
) -> int | None:
    """The smallest GPU count the split allows that fits, or None (no count up to `max_gpus` does)."""
    for n in range(1, max_gpus(cfg, split) + 1):
        if fit(cfg, layers, device, n, work, split=split, mem_util=mem_util).fits:
            return n
    return None


@dataclass(frozen=True, slots=True)
class Offload:
    """Routed experts in CPU RAM, everything else on one GPU."""

    ram_bytes: int
    vram_bytes: int
    usable_vram_bytes: int

    @property
    def fits_one_gpu(self) -> bool:
        return self.vram_bytes <= self.usable_vram_bytes


def offload_plan(
    cfg: ModelConfig, layers: list[LayerBytes], device: GPU, work: Workload, *, mem_util: float = DEFAULT_MEM_UTIL
) -> Offload:
    ram = sum(b.expert * b.experts for b in layers)
    on_gpu = sum(b.total for b in layers) - ram
    vram = on_gpu + work.kv_bytes(cfg) + overhead_bytes(cfg, work.chunk_tokens, work.batch)
    return Offload(ram, vram, usable_bytes(device, mem_util))

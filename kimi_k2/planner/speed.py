"""Upper bounds on speed: decode from memory bandwidth, prefill from FLOPs. Real engines reach a fraction.

Decode: one step generates a token for each of `batch` sequences at `context` tokens. The busiest GPU must
read its share of every weight the step touches (all non-expert weights except the embedding table, of
which only a row per token is read, plus the distinct routed experts the batch selects) and its KV cache:

    step_time >= bytes_read_by_busiest_gpu / bandwidth,   tokens/s <= batch / step_time

Distinct experts per MoE layer for b tokens routed uniformly to K of E: E × (1 − (1 − K/E)^b) (K for one
token; it approaches E as the batch grows, which is why MoE decode gets cheaper per token with batch size).
With a pipeline split the step is a round over m = min(batch, n) micro-batches of batch/m sequences:
round_time >= max(m × stage_time, n × stage_time) with stage_time = whole-model read / n / bandwidth.

Prefill: the dense FLOPs of a token (2 × active parameters without the embedding table) plus causal
attention over a prompt of `context` tokens (2 × layers × heads × (qk_head_dim + v_head_dim) × (S+1)/2),
against n × the peak dense tensor FLOP/s: FP8 tensor cores when the weights are fp8 and the GPU has them,
bf16 otherwise (int and GGUF formats dequantize to bf16).

CPU offload: the GPU part and the experts, read from RAM at `ram_bandwidth`, run one after the other.
"""

from __future__ import annotations

import math
from dataclasses import replace

from kimi_k2.config import ModelConfig
from kimi_k2.planner.fit import LayerBytes, Workload
from kimi_k2.planner.formats import resolve_format
from kimi_k2.planner.hardware import GPU
from kimi_k2.planner.params import count_params

DEFAULT_RAM_BANDWIDTH = 0.46e12  # one socket of 12-channel DDR5-4800: 12 × 38.4 GB/s


def distinct_experts(cfg: ModelConfig, tokens: float, experts: int | None = None) -> float:
    """Expected routed experts (of `experts`, default all of a layer's) that `tokens` tokens select."""
    e = cfg.n_routed_experts
    if e == 0 or tokens <= 0:
        return 0.0
    pool = e if experts is None else experts
    return pool * (1.0 - (1.0 - cfg.num_experts_per_tok / e) ** tokens)


def _non_expert_read(layers: list[LayerBytes]) -> tuple[int, int]:
    """(replicated, sharded) bytes a decode step reads besides the routed experts (no embedding table)."""
    return sum(b.replicated for b in layers), sum(b.sharded for b in layers)


def _expert_read(cfg: ModelConfig, layers: list[LayerBytes], tokens: float, experts_per_gpu: int | None = None) -> float:
    return sum(b.expert * distinct_experts(cfg, tokens, experts_per_gpu) for b in layers if b.experts)


def decode_bytes_per_step(cfg: ModelConfig, layers: list[LayerBytes], split: str, n: int, work: Workload) -> float:
    """Bytes the busiest GPU reads in one decode step (tp / ep); the whole model's read for pp."""
    replicated, sharded = _non_expert_read(layers)
    if split == "tp":  # every rank reads the whole latent cache: MLA's latent is shared by all heads
        return replicated + sharded / n + _expert_read(cfg, layers, work.batch) / n + work.kv_bytes(cfg)
    if split == "ep":
        local = math.ceil(cfg.n_routed_experts / n) if cfg.n_routed_experts else 0
        local_kv = work.kv_bytes(cfg, math.ceil(work.batch / n))
        return replicated + sharded + _expert_read(cfg, layers, work.batch, local) + local_kv
    return replicated + sharded + _expert_read(cfg, layers, work.batch) + work.kv_bytes(cfg)


def decode_tokens_per_s_bound(
    cfg: ModelConfig, layers: list[LayerBytes], device: GPU, work: Workload, *, split: str = "tp", n: int = 1
) -> float:
    """Upper bound on generated tokens/s summed over the batch."""
    if split != "pp":
        return work.batch * device.bandwidth / decode_bytes_per_step(cfg, layers, split, n, work)
    micro = min(work.batch, n)
    micro_work = replace(work, batch=math.ceil(work.batch / micro))
    stage_time = decode_bytes_per_step(cfg, layers, "pp", 1, micro_work) / n / device.bandwidth
    return work.batch / (max(micro, n) * stage_time)


def prefill_flops_per_token(cfg: ModelConfig, prompt_tokens: int) -> float:
    """Forward FLOPs per prompt token: matmuls of the active weights + causal attention over the prompt."""
    counts = count_params(cfg)
    dense = 2 * (counts.active - counts.embed_tokens)
    per_key = 2 * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim)
    return dense + cfg.num_hidden_layers * per_key * (prompt_tokens + 1) / 2


def peak_flops(device: GPU, fmt: str) -> float:
    """The tensor-core rate the format computes at on this device."""
    if resolve_format(fmt) == "fp8" and device.fp8_flops:
        return device.fp8_flops
    return device.bf16_flops


def prefill_tokens_per_s_bound(cfg: ModelConfig, device: GPU, fmt: str, *, n: int = 1, prompt_tokens: int) -> float | None:
    """Upper bound on prompt tokens/s for prompts of `prompt_tokens`; None without a FLOP figure (custom GPU)."""
    peak = peak_flops(device, fmt)
    if not peak:
        return None
    return n * peak / prefill_flops_per_token(cfg, prompt_tokens)


def offload_decode_tokens_per_s_bound(
    cfg: ModelConfig, layers: list[LayerBytes], device: GPU, work: Workload, ram_bandwidth: float = DEFAULT_RAM_BANDWIDTH
) -> float:
    """Experts in RAM, the rest on one GPU: GPU read time + expert read time from RAM, per step."""
    replicated, sharded = _non_expert_read(layers)
    gpu_time = (replicated + sharded + work.kv_bytes(cfg)) / device.bandwidth
    cpu_time = _expert_read(cfg, layers, work.batch) / ram_bandwidth
    return work.batch / (gpu_time + cpu_time)

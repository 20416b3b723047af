"""Weight bytes of a K2-family model in each storage format, summed tensor by tensor.

Formats (names are what `--weights` takes; `weight_bytes(cfg, fmt)` accepts the same):

* `fp32`, `bf16` (alias `fp16`): every tensor at 4 / 2 bytes, except `e_score_correction_bias`, which stays
  float32 in every format (as in the official checkpoint: routing needs its precision).
* `fp8`: the official Kimi-K2-Instruct layout (SPEC §3). Every Linear except the router is float8 (1 byte)
  with a float32 `weight_scale_inv` of shape `[ceil(out/128), ceil(in/128)]`; embeddings, lm_head, norms
  and the router are bf16.
* `int8`: every Linear except the router int8, one bf16 scale per output row (`[out, 1]`, compressed-tensors
  channel-wise); the rest bf16.
* `int4` (alias `k2-thinking`): the official Kimi-K2-Thinking layout. Routed experts only are
  compressed-tensors `pack-quantized`: `weight_packed` int32 `[out, ceil(in/8)]`, `weight_scale` bf16
  `[out, ceil(in/32)]`, `weight_shape` int32 `[2]`; everything else bf16.
* `int4-all`: the same group-32 packing for every Linear except the router; embeddings, lm_head bf16.
* GGUF types (`q8_0`, `q6_k`, `q5_k`, `q4_k`, `q3_k`, `q2_k`, `iq1_s`, ...): every 2-D tensor at the type's
  llama.cpp bits per weight (block scales included in the figure); norms, the router (`ffn_gate_inp`) and
  the bias in float32, as llama.cpp's converter keeps them. Real files mix types (Unsloth's "UD" quants keep
  attention, shared experts and some `down_proj` at higher precision), so published sizes run above the
  uniform figure: `PUBLISHED_SIZES` lists them for comparison.

Kimi-K2-Instruct, against the published figures (SPEC §8):
fp8 1,029,173,249,888 B = 958.49 GiB vs 1,029.2 GB / 958.5 GiB published: the ~27 MB residual is what the
files hold besides weights (the safetensors JSON headers of 61 shards, each listing ~2,300 tensors, and the
61 stray `rotary_emb.inv_freq` buffers); bf16 2,052,816,510,976 B vs 2,052.8 GB; int4 594,205,904,896 B vs
≈ 594 GB (the Thinking checkpoint's 62 shards and headers again); q8_0 1,091 GB vs Unsloth's 1.09 TB.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from kimi_k2.config import ModelConfig
from kimi_k2.planner.tensors import TensorSpec, model_tensors

FP8_BLOCK = 128
INT4_GROUP = 32
INT4_PER_WORD = 8  # nibbles packed into one int32

# llama.cpp bits per weight of each GGUF type, block scales included (ggml-common.h block sizes).
GGUF_BITS_PER_WEIGHT: dict[str, float] = {
    "q8_0": 8.5,
    "q6_k": 6.5625,
    "q5_k": 5.5,
    "q4_k": 4.5,
    "q4_0": 4.5,
    "iq4_xs": 4.25,
    "q3_k": 3.4375,
    "iq3_xxs": 3.0625,
    "q2_k": 2.625,
    "iq2_xxs": 2.0625,
    "iq1_m": 1.75,
    "iq1_s": 1.5625,
}


@dataclass(frozen=True, slots=True)
class PublishedSize:
    """A published K2 checkpoint size and the format of ours it compares with."""

    name: str
    fmt: str
    bytes: int
    source: str


PUBLISHED_SIZES: tuple[PublishedSize, ...] = (
    PublishedSize("Kimi-K2-Instruct (official FP8)", "fp8", 1_029_200_000_000, "moonshotai/Kimi-K2-Instruct, 958.5 GiB"),
    PublishedSize("Kimi-K2 BF16 (converted)", "bf16", 2_052_800_000_000, "SPEC §8"),
    PublishedSize("Kimi-K2-Thinking (official INT4)", "int4", 594_000_000_000, "moonshotai/Kimi-K2-Thinking, 62 shards"),
    PublishedSize("Unsloth Kimi-K2 GGUF Q8", "q8_0", 1_090_000_000_000, "unsloth/Kimi-K2-Instruct-GGUF"),
    PublishedSize("Unsloth Kimi-K2 GGUF UD-Q4_K_XL", "q4_k", 588_000_000_000, "unsloth/Kimi-K2-Instruct-GGUF"),
    PublishedSize("Unsloth Kimi-K2 GGUF UD-Q2_K_XL", "q2_k", 381_000_000_000, "unsloth/Kimi-K2-Instruct-GGUF"),
    PublishedSize("Unsloth Kimi-K2 GGUF 1.8-bit (UD-TQ1_0)", "iq1_s", 245_000_000_000, "unsloth/Kimi-K2-Instruct-GGUF"),
)

TensorBytes = Callable[[TensorSpec], int]  # bytes of ONE of the spec's `count` tensors, scales included


def _uniform(width: int) -> TensorBytes:
    def rule(t: TensorSpec) -> int:
        return t.numel * (4 if t.kind == "score_bias" else width)

    return rule


def _bf16_unless(quantize: Callable[[TensorSpec], bool], linear_bytes: Callable[[int, int], int]) -> TensorBytes:
    """Linears selected by `quantize` take `linear_bytes(out, in)`; everything else bf16 (the bias fp32)."""
    bf16 = _uniform(2)

    def rule(t: TensorSpec) -> int:
        if t.kind == "linear" and quantize(t):
            return linear_bytes(*t.shape)
        return bf16(t)

    return rule


def fp8_linear_bytes(out: int, inp: int) -> int:
    """float8 weight + float32 `weight_scale_inv[ceil(out/128), ceil(in/128)]`."""
    return out * inp + 4 * math.ceil(out / FP8_BLOCK) * math.ceil(inp / FP8_BLOCK)


def int8_linear_bytes(out: int, inp: int) -> int:
    """int8 weight + one bf16 scale per output row."""
    return out * inp + 2 * out


def int4_linear_bytes(out: int, inp: int) -> int:
    """int32 `weight_packed[out, ceil(in/8)]` + bf16 `weight_scale[out, ceil(in/32)]` + int32 `weight_shape[2]`."""
    return 4 * out * math.ceil(inp / INT4_PER_WORD) + 2 * out * math.ceil(inp / INT4_GROUP) + 4 * 2


def _gguf(bits: float) -> TensorBytes:
    def rule(t: TensorSpec) -> int:
        if len(t.shape) == 1 or t.kind == "router":
            return 4 * t.numel
        return math.ceil(t.numel * bits / 8)

    return rule


def _every_linear(t: TensorSpec) -> bool:
    return True


def _routed_experts(t: TensorSpec) -> bool:
    return t.component == "routed_experts"


FORMATS: dict[str, TensorBytes] = {
    "fp32": _uniform(4),
    "bf16": _uniform(2),
    "fp8": _bf16_unless(_every_linear, fp8_linear_bytes),
    "int8": _bf16_unless(_every_linear, int8_linear_bytes),
    "int4": _bf16_unless(_routed_experts, int4_linear_bytes),
    "int4-all": _bf16_unless(_every_linear, int4_linear_bytes),
    **{name: _gguf(bits) for name, bits in GGUF_BITS_PER_WEIGHT.items()},
}
ALIASES = {"fp16": "bf16", "float32": "fp32", "bfloat16": "bf16", "float16": "bf16", "k2-thinking": "int4"}


def resolve_format(fmt: str) -> str:
    """The canonical format name; ValueError listing the known ones."""
    name = fmt.strip().lower()
    name = ALIASES.get(name, name)
    if name not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; known formats: {', '.join([*FORMATS, *ALIASES])}")
    return name


def tensor_bytes(t: TensorSpec, fmt: str) -> int:
    """Bytes of all `t.count` copies of a tensor in `fmt`, scale tensors included."""
    return t.count * FORMATS[resolve_format(fmt)](t)


def weight_bytes_by_component(cfg: ModelConfig, fmt: str) -> dict[str, int]:
    """Bytes per `ParamCounts` component (embed_tokens, attention, routed_experts, ...)."""
    out: dict[str, int] = {}
    for t in model_tensors(cfg):
        out[t.component] = out.get(t.component, 0) + tensor_bytes(t, fmt)
    return out


def weight_bytes(cfg: ModelConfig, fmt: str) -> int:
    """Bytes of every weight (and quantization scale) of the model stored in `fmt`."""
    return sum(tensor_bytes(t, fmt) for t in model_tensors(cfg))


"""`Weight`: one linear layer's weight in the format it is stored in, with one product call.

A `Weight` knows its format (`fp32`, `bf16`, `fp8` block 128×128, `int4` group-32 pack-quantized, or `dense`
for any other float dtype), its stored tensors (possibly views into memory-mapped safetensors files: nothing is
copied) and its logical shape [O, I]. `mm(x, out=..., alpha=...)` is the product; `dense(dtype)` the weight as
a plain tensor, for reference paths. The model's quantized modules and the engine's fast runner both call it, so
neither has a branch per format.

How `mm` runs, by rows of x:
* up to `native_rows` rows (decode): the C++ kernels (`native.py`), which read the stored bytes and decode
  them in registers, when they are built;
* more rows (prefill), or without the kernels: the weight in tiles of `TILE_ROWS` rows, each dequantized and
  multiplied with torch (a dense fp32/bf16 weight of x's dtype is multiplied directly, in the form MKL reads
  fastest for the shape: `DenseForms`). No call ever dequantizes a whole tensor.

`ConcatWeight` puts weights that share their input side by side (q_a + kv_a, gate + up) without copying them;
`ExpertBank` holds a layer's routed experts as a table of addresses for the one-call expert kernel.

Legend: M rows of x, O outputs, I inputs, E experts, K experts per token, D hidden, N expert width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from kimi_k2.kernels.native import native
from kimi_k2.kernels.reference import dequantized_rows
from kimi_k2.model.quant_linear import FP8_BLOCK, FP8_DTYPE, INT4_GROUP

NATIVE_CODES = {"fp32": 0, "bf16": 1, "fp8": 2, "int4": 3}
# The most rows of x the C++ kernels take; above, tiles through torch. A kernel decodes the weight once per four
# rows of x, so its cost grows with the rows while MKL's does not (bench/kernel_speed.py measures the crossover).
NATIVE_MAX_ROWS = {"fp32": 4, "bf16": 32, "fp8": 32, "int4": 32}
# The most tokens whose routed experts run in one kernel call (a batched decode step); prefill goes expert by
# expert through tiles. fp32 experts have torch's grouped matmul over stacked copies from 3 tokens on.
NATIVE_EXPERT_TOKENS = {"fp32": 32, "bf16": 32, "fp8": 32, "int4": 32}
TILE_ROWS = 512  # rows per dequantized tile (a multiple of FP8's 128-row blocks)

# When a dense product runs as (W @ xᵀ)ᵀ instead of x @ Wᵀ. MKL picks its kernel and its split over the threads by
# shape: for 12-32 rows (inclusive; 16 concurrent decodes) it reads the medium preset's weights with 1,024+
# inputs 1.1-2.1× faster transposed, those with 256-512 inputs mostly slower; 2-8 rows are mostly faster as
# x @ Wᵀ and 64 rows even or slower (bench/gemm_layout.py, docs/engine.md). A weight read by the lm_head reads
# faster transposed for 3-32 rows.
TRANSPOSED_ROW_RANGE = (12, 32)
TRANSPOSED_MIN_INPUTS = 1024
LM_HEAD_TRANSPOSED_ROW_RANGE = (3, 32)


@dataclass(frozen=True, slots=True)
class Shard:
    """The part of a weight one rank holds (tensor parallelism, `kimi_k2.parallel.layout`): rows (dim 0) or inputs
    (dim 1) [start, stop) of the whole weight; `dim=None`: all of it."""

    dim: int | None
    start: int = 0
    stop: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def partial_sums(self) -> bool:
        """A product over a slice of the inputs is this rank's part of a sum over the ranks: it needs a reduce."""
        return self.dim == 1


WHOLE = Shard(None)


def dense_format(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, "dense")


@dataclass(eq=False)
class Weight:
    """A weight [O, I] as stored. `data`: fp32/bf16/other float [O, I]; fp8: float8_e4m3fn [O, I]; int4: int32
    [O, ceil(I/8)]. `scale`: fp8 float32 [ceil(O/128), ceil(I/128)]; int4 bf16 [O, ceil(I/32)]; else None.
    `block`: (rows, inputs) that share one scale."""

    fmt: str
    data: torch.Tensor
    scale: torch.Tensor | None
    out_features: int
    in_features: int
    block: tuple[int, int] = (1, 1)
    lm_head: bool = False  # picks the lm_head's transposed row range for dense products
    int8_activations: bool = False  # int4 only: the kernels quantize x per 32 inputs to int8 (see docs/engine.md)
    shard: Shard = WHOLE  # the part of the model's weight this rank holds
    _t: torch.Tensor | None = field(default=None, repr=False)  # dense: the transposed view [I, O], made once

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dense(cls, weight: torch.Tensor, *, lm_head: bool = False) -> Weight:
        out_features, in_features = weight.shape
        return cls(dense_format(weight.dtype), weight, None, out_features, in_features, (1, in_features), lm_head)

    @classmethod
    def fp8(cls, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = FP8_BLOCK) -> Weight:
        out_features, in_features = weight.shape
        return cls("fp8", weight, scale_inv, out_features, in_features, tuple(block))

    @classmethod
    def int4(cls, packed: torch.Tensor, scale: torch.Tensor, in_features: int, group_size: int = INT4_GROUP) -> Weight:
        return cls("int4", packed, scale, packed.shape[0], in_features, (1, group_size))

    # ---------------------------------------------------------------- facts
    @property
    def shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors (what a product reads)."""
        scale = 0 if self.scale is None else self.scale.numel() * self.scale.element_size()
        return self.data.numel() * self.data.element_size() + scale

    @property
    def native_rows(self) -> int:
        return NATIVE_MAX_ROWS.get(self.fmt, 0)

    @property
    def parts(self) -> list[Weight]:
        """The stored weights this product runs over: itself (a `ConcatWeight` has several)."""
        return [self]

    def addresses(self) -> tuple[int, int]:
        """(data address, scale address or 0): where the kernels find the stored tensors."""
        return self.data.data_ptr(), 0 if self.scale is None else self.scale.data_ptr()

    def native_args(self) -> tuple[int, int, int, int, int, int, int]:
        """(format code, data address, scale address, O, I, block rows, block inputs) for the C++ kernels."""
        return (NATIVE_CODES[self.fmt], *self.addresses(), self.out_features, self.in_features, *self.block)

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as a dense [O, I] tensor in `dtype` (q · scale in float32, rounded once)."""
        return self.rows(0, self.out_features, dtype)

    def rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows [start, stop) dense in `dtype` (by the kernels' decoders where they are built: the same values)."""
        kernels = native() if self.fmt in ("fp8", "int4", "bf16") and self.data.device.type == "cpu" else None
        if kernels is not None:
            out = torch.empty(stop - start, self.in_features, dtype=torch.float32)
            kernels.dequantize(out, *self.native_args(), start)
            return out if dtype == torch.float32 else out.to(dtype)
        fmt = self.fmt if self.fmt in ("fp8", "int4") else "dense"
        return dequantized_rows(fmt, self.data, self.scale, self.in_features, self.block, slice(start, stop), dtype)

    # ---------------------------------------------------------------- product
    def mm(self, x: torch.Tensor, out: torch.Tensor | None = None, *, alpha: float = 1.0) -> torch.Tensor:
        """x [M, I] → x·Wᵀ [M, O] in x's dtype; with `out` ([M, O], any strides with unit last stride), adds
        alpha·x·Wᵀ to it in place and returns it."""
        rows = x.shape[0]
        kernels = native() if rows <= self.native_rows and x.device.type == "cpu" else None
        if kernels is not None:
            x32 = x if x.dtype == torch.float32 and x.stride(-1) == 1 else x.float().contiguous()
            if out is not None and out.dtype == torch.float32 and out.stride(-1) == 1:
                kernels.linear(x32, out, *self.native_args(), alpha, True, self.int8_activations)
                return out
            y = torch.empty(rows, self.out_features, dtype=torch.float32, device=x.device)
            kernels.linear(x32, y, *self.native_args(), 1.0, False, self.int8_activations)
            return y.to(x.dtype) if out is None else out.add_(y.to(out.dtype), alpha=alpha)
        if self.fmt in ("fp8", "int4") or self.data.dtype != x.dtype:
            return self._tiled(x, out, alpha)
        return self._dense_mm(x, out, alpha)

    def _tiled(self, x: torch.Tensor, out: torch.Tensor | None, alpha: float) -> torch.Tensor:
        """The product one dequantized tile of `TILE_ROWS` rows at a time."""
        result = out if out is not None else x.new_empty(x.shape[0], self.out_features)
        for start in range(0, self.out_features, TILE_ROWS):
            stop = min(self.out_features, start + TILE_ROWS)
            tile = self.rows(start, stop, x.dtype).t()  # (I, n)
            if out is None:
                torch.mm(x, tile, out=result[:, start:stop])
            else:
                result[:, start:stop].addmm_(x, tile, alpha=alpha)
        return result

    def _dense_mm(self, x: torch.Tensor, out: torch.Tensor | None, alpha: float) -> torch.Tensor:
        """x · Wᵀ for a dense weight of x's dtype, as `x @ Wᵀ` or as `(W @ xᵀ)ᵀ`, whichever MKL reads faster."""
        if self._t is None:
            self._t = self.data.t()
        low, high = LM_HEAD_TRANSPOSED_ROW_RANGE if self.lm_head else TRANSPOSED_ROW_RANGE
        transposed = low <= x.shape[0] <= high and (self.lm_head or self.in_features >= TRANSPOSED_MIN_INPUTS)
        if out is None:
            return torch.mm(self.data, x.t()).t().contiguous() if transposed else torch.mm(x, self._t)
        if transposed or alpha != 1.0 or out.dtype != x.dtype:
            return out.add_(self._dense_mm(x, None, 1.0).to(out.dtype), alpha=alpha)
        return out.addmm_(x, self._t)


@dataclass(eq=False)
class ConcatWeight:
    """Weights that share their input, as one product whose output is theirs side by side: [M, ΣO]."""

    parts: list[Weight]

    @property
    def out_features(self) -> int:
        return sum(p.out_features for p in self.parts)

    @property
    def in_features(self) -> int:
        return self.parts[0].in_features

    @property
    def shard(self) -> Shard:
        return self.parts[0].shard  # side by side along the outputs: every part is split the same way

    def mm(self, x: torch.Tensor, out: torch.Tensor | None = None, *, alpha: float = 1.0) -> torch.Tensor:
        result = out if out is not None else x.new_zeros(x.shape[0], self.out_features)
        offset = 0
        for part in self.parts:
            part.mm(x, result[:, offset : offset + part.out_features], alpha=alpha)
            offset += part.out_features
        return result

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.cat([p.dense(dtype) for p in self.parts])


def concat(weights: Sequence[Weight]) -> Weight | ConcatWeight:
    """One product over weights that share their input (a single weight is returned as it is)."""
    return weights[0] if len(weights) == 1 else ConcatWeight(list(weights))


@dataclass(eq=False)
class ExpertBank:
    """A layer's routed experts (gate_proj, up_proj: [N, D]; down_proj: [D, N] each) as stored, all of one
    format. `table` [E, 6] holds each expert's (data, scale) addresses of gate, up and down for the one-call
    expert kernel; the Weights keep the tensors alive."""

    gate: list[Weight]
    up: list[Weight]
    down: list[Weight]
    int8_activations: bool = False  # int4 only: see `Weight.int8_activations`
    table: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        formats = {w.fmt for w in (*self.gate, *self.up, *self.down)}
        if len(formats) != 1:
            raise ValueError(f"an expert bank needs one format for all its experts, found {sorted(formats)}")
        self.fmt = formats.pop()
        rows = [[a for w in weights for a in w.addresses()] for weights in zip(self.gate, self.up, self.down)]
        self.table = torch.tensor(rows, dtype=torch.int64)

    @property
    def num_experts(self) -> int:
        return len(self.gate)

    @property
    def native_tokens(self) -> int:
        """The most tokens the one-call kernel takes: it groups the tokens by expert, so an expert gets about
        tokens × K / E of them, which stays within the kernels' row limit for a decode batch."""
        return NATIVE_EXPERT_TOKENS.get(self.fmt, 0)

    def run_native(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> bool:
        """out [M, D] float32 += Σ_k weights[t, k] · expert_k(x_t), in one call; False if the kernels are absent."""
        kernels = native()
        if kernels is None or x.device.type != "cpu":
            return False
        x32 = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
        first = self.gate[0]
        kernels.experts(
            x32,
            experts.contiguous(),
            weights.float().contiguous(),
            self.table,
            NATIVE_CODES[self.fmt],
            first.out_features,
            first.block[0],
            first.block[1],
            out,
            self.int8_activations,
        )
        return True

    def set_int8_activations(self, enabled: bool) -> None:
        """Switch the int8-activation mode for this bank's int4 experts (kernel calls and per-expert products)."""
        self.int8_activations = enabled and self.fmt == "int4"
        for w in (*self.gate, *self.up, *self.down):
            w.int8_activations = self.int8_activations

    def expert_mlp(self, e: int, rows: torch.Tensor) -> torch.Tensor:
        """Expert e on rows [n, D] → [n, D]: down(silu(gate(x)) * up(x)), through `Weight.mm`."""
        gate = self.gate[e].mm(rows)
        return self.down[e].mm(torch.nn.functional.silu(gate).mul_(self.up[e].mm(rows)))


NATIVE_NORM_MAX_ROWS = 64  # above, torch's F.rms_norm (its dispatch cost is amortized over the rows)


def rms_norm_rows(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` for an `RMSNorm` module; a few float32 rows by the kernels (one call instead of torch's ~50 µs)."""
    kernels = native() if x.dtype == torch.float32 and x.shape[0] <= NATIVE_NORM_MAX_ROWS else None
    if kernels is None or norm.weight.dtype != torch.float32 or x.device.type != "cpu" or x.stride(-1) != 1:
        return norm(x)
    out = torch.empty(x.shape, dtype=torch.float32)
    kernels.rms_norm(x, norm.weight, norm.eps, out)
    return out


def weight_of(module: torch.nn.Module, *, lm_head: bool = False) -> Weight:
    """The `Weight` of a Linear, FP8Linear or Int4Linear module (views of its tensors, nothing copied)."""
    from kimi_k2.model.quant_linear import FP8Linear, Int4Linear

    if isinstance(module, FP8Linear):
        return Weight.fp8(module.weight, module.weight_scale_inv, module.block)
    if isinstance(module, Int4Linear):
        return Weight.int4(module.weight_packed, module.weight_scale, module.in_features, module.group_size)
    weight = module.weight.detach()
    assert weight.dtype != FP8_DTYPE, "a float8 weight needs its FP8Linear module"
    return Weight.from_dense(weight, lm_head=lm_head)

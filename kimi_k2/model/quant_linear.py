"""Quantized linear layers in the official K2 formats, and the pure functions that (de)quantize them.

Source: SPEC §3. Two formats, each stored under the checkpoint's own tensor names so a state_dict key is a
checkpoint key:

* Block FP8 (Kimi-K2-Instruct, DeepSeek-V3): `weight` float8_e4m3fn [O, I] and `weight_scale_inv` float32
  [ceil(O/128), ceil(I/128)]; `W[o, i] = float(weight[o, i]) * weight_scale_inv[o // 128, i // 128]`. Edge blocks
  of shapes not divisible by 128 are partial. Our quantizer uses `scale_inv = amax(|block|) / 448` (448 is the
  largest finite e4m3 value); an all-zero block gets scale 1.
* INT4 group-32 (Kimi-K2-Thinking, compressed-tensors `pack-quantized`, symmetric): `weight_packed` int32
  [O, ceil(I/8)] (value v in [-8, 7] stored as the nibble v + 8; word k holds columns 8k..8k+7, column 8k+j in
  bits 4j..4j+3; padding nibbles are 0), `weight_scale` bf16 [O, ceil(I/32)], `weight_shape` int32 [2] = (O, I).
  `W[o, i] = q[o, i] * weight_scale[o, i // 32]`. Our quantizer uses `scale = amax(|group|) / 7` rounded to
  bf16, so no value is ever clamped and every error is at most half a step (`scale / 2`).

The modules keep the packed storage and dequantize on the fly in `forward` (weight-only: the activation stays
in its dtype). Dequantization computes `q * scale` in float32 and rounds once to the target dtype, so a model
that dequantized on load and one that dequantizes per call hold bit-identical weights and give identical
logits. `FP8Linear(activation_scheme="dynamic")` additionally emulates the official run-time activation
quantization (per token, per 128 channels, `scale = max(amax, 1e-4) / 448`) as an opt-in reference.

Legend: O out_features, I in_features, G blocks / groups along a dimension, T tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn value
FP8_BLOCK = (128, 128)
FP8_ACTIVATION_BLOCK = 128
FP8_ACTIVATION_MIN_AMAX = 1e-4
INT4_GROUP = 32
INT4_PER_WORD = 8
INT4_MIN, INT4_MAX = -8, 7
INT4_SCALE_DTYPE = torch.bfloat16


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------- FP8 block
def fp8_scale_shape(shape: tuple[int, int], block: tuple[int, int] = FP8_BLOCK) -> tuple[int, int]:
    """Shape of `weight_scale_inv` for a weight [O, I]: one float32 per block, partial edge blocks included."""
    return _ceil_div(shape[0], block[0]), _ceil_div(shape[1], block[1])


def _expand_blocks(scale: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """[Go, Gi] per-block values → [O, I] per-element values (edge blocks cropped)."""
    return scale.repeat_interleave(block[0], dim=0)[: shape[0]].repeat_interleave(block[1], dim=1)[:, : shape[1]]


def fp8_quantize(w: torch.Tensor, block: tuple[int, int] = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """w [O, I] float → (float8_e4m3fn [O, I], float32 scale_inv [Go, Gi]) with scale_inv = amax / 448 per block."""
    out_features, in_features = w.shape
    go, gi = fp8_scale_shape((out_features, in_features), block)
    magnitude = F.pad(w.detach().float().abs(), (0, gi * block[1] - in_features, 0, go * block[0] - out_features))
    amax = magnitude.view(go, block[0], gi, block[1]).amax(dim=(1, 3))  # (Go, Gi)
    del magnitude
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    scaled = w.detach().float() / _expand_blocks(scale_inv, (out_features, in_features), block)
    return scaled.clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale_inv


def fp8_dequantize(
    weight: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype, block: tuple[int, int] = FP8_BLOCK
) -> torch.Tensor:
    """float8 [O, I] and scale_inv [Go, Gi] → dense [O, I] in `dtype`.

    Works in place on the output (float8 → dtype is exact), so the only temporary is one row of scales per
    row block: the product is formed in float32 and rounded once to `dtype`.
    """
    out_features, in_features = weight.shape
    if tuple(scale_inv.shape) != fp8_scale_shape((out_features, in_features), block):
        raise ValueError(
            f"fp8 scale_inv shape {list(scale_inv.shape)} does not match weight {list(weight.shape)} "
            f"with {block[0]}x{block[1]} blocks (expected {list(fp8_scale_shape((out_features, in_features), block))})"
        )
    out = weight.to(dtype)
    row_scales = scale_inv.float().repeat_interleave(block[1], dim=1)[:, :in_features]  # (Go, I)
    full = out_features // block[0]
    if full:
        out[: full * block[0]].view(full, block[0], in_features).mul_(row_scales[:full].unsqueeze(1))
    if out_features % block[0]:
        out[full * block[0] :].mul_(row_scales[full])
    return out


def fp8_quantize_activation(x: torch.Tensor, block: int = FP8_ACTIVATION_BLOCK) -> torch.Tensor:
    """The "dynamic" activation scheme, emulated: x [..., I] → float32 x after an fp8 round trip per 128 channels.

    Per token and per 128-channel block: `scale = max(amax, 1e-4) / 448`, `x_q = fp8(x / scale)`; returns
    `float(x_q) * scale`, so a float32 matmul with the dequantized weight equals the FP8 GEMM that accumulates
    each 128-wide K block in float32 (up to summation order).
    """
    width = x.shape[-1]
    blocks = _ceil_div(width, block)
    padded = F.pad(x.float(), (0, blocks * block - width)).unflatten(-1, (blocks, block))  # (..., G, 128)
    scale = padded.abs().amax(dim=-1, keepdim=True).clamp(min=FP8_ACTIVATION_MIN_AMAX) / FP8_MAX
    quantized = (padded / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return (quantized.float() * scale).flatten(-2)[..., :width]


# ---------------------------------------------------------------------------------------------- INT4 groups
def int4_packed_shape(shape: tuple[int, int]) -> tuple[int, int]:
    return shape[0], _ceil_div(shape[1], INT4_PER_WORD)


def int4_scale_shape(shape: tuple[int, int], group_size: int = INT4_GROUP) -> tuple[int, int]:
    return shape[0], _ceil_div(shape[1], group_size)


def int4_pack(q: torch.Tensor) -> torch.Tensor:
    """Integer values in [-8, 7], [O, I] → int32 [O, ceil(I/8)] (nibble v + 8, column 8k+j in bits 4j..4j+3)."""
    if q.is_floating_point() or q.numel() and (int(q.min()) < INT4_MIN or int(q.max()) > INT4_MAX):
        raise ValueError(f"int4_pack needs integers in [{INT4_MIN}, {INT4_MAX}]")
    rows, cols = q.shape
    words = _ceil_div(cols, INT4_PER_WORD)
    nibbles = F.pad(q.to(torch.int64) - INT4_MIN, (0, words * INT4_PER_WORD - cols)).view(rows, words, INT4_PER_WORD)
    shifts = torch.arange(0, 4 * INT4_PER_WORD, 4, dtype=torch.int64, device=q.device)
    packed = (nibbles << shifts).sum(dim=-1)  # (O, W) in [0, 2^32)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)  # two's-complement int32


def int4_unpack(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """int32 [O, ceil(I/8)] → int8 [O, I] with values in [-8, 7]. Bit-exact inverse of `int4_pack`."""
    rows, words = packed.shape
    if words != _ceil_div(in_features, INT4_PER_WORD):
        raise ValueError(f"int4 packed width {words} cannot hold {in_features} columns (expected {_ceil_div(in_features, 8)})")
    out = torch.empty(rows, words, INT4_PER_WORD, dtype=torch.int8, device=packed.device)
    for j in range(INT4_PER_WORD):  # one nibble position at a time: temporaries stay [O, W]
        out[..., j] = ((packed >> (4 * j)) & 0xF).to(torch.int8) + INT4_MIN
    return out.view(rows, words * INT4_PER_WORD)[:, :in_features]


def int4_quantize(
    w: torch.Tensor, group_size: int = INT4_GROUP
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [O, I] float → (weight_packed int32, weight_scale bf16 [O, ceil(I/g)], weight_shape int32 [2])."""
    rows, cols = w.shape
    groups = _ceil_div(cols, group_size)
    grouped = F.pad(w.detach().float(), (0, groups * group_size - cols)).view(rows, groups, group_size)
    scale = (grouped.abs().amax(dim=-1) / INT4_MAX).to(INT4_SCALE_DTYPE)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(grouped / scale.float().unsqueeze(-1)).clamp_(INT4_MIN, INT4_MAX).to(torch.int8)
    packed = int4_pack(q.view(rows, groups * group_size)[:, :cols])
    return packed, scale, torch.tensor([rows, cols], dtype=torch.int32)


def int4_dequantize(
    packed: torch.Tensor,
    scale: torch.Tensor,
    shape: tuple[int, int],
    dtype: torch.dtype,
    group_size: int = INT4_GROUP,
) -> torch.Tensor:
    """Packed int4 + per-group scales → dense [O, I] in `dtype` (q * scale in float32, rounded once)."""
    rows, cols = shape
    groups = _ceil_div(cols, group_size)
    if tuple(scale.shape) != (rows, groups):
        raise ValueError(f"int4 weight_scale shape {list(scale.shape)}, expected {[rows, groups]} for {list(shape)}")
    q = int4_unpack(packed, cols)  # (O, I) int8
    out = torch.zeros(rows, groups * group_size, dtype=dtype, device=packed.device)
    out[:, :cols] = q
    out.view(rows, groups, group_size).mul_(scale.float().unsqueeze(-1))
    return out if cols == groups * group_size else out[:, :cols].contiguous()


# ---------------------------------------------------------------------------------------------- modules
class _QuantizedLinear(nn.Module):
    """Shared plumbing: storage buffers that keep their dtype under `module.to(dtype)` / `.float()` / `.half()`."""

    _storage: tuple[str, ...] = ()
    in_features: int
    out_features: int
    dtype: torch.dtype  # the dtype `dequantize_weight()` returns by default (the model's compute dtype)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> _QuantizedLinear:
        # A dtype cast would destroy the packed storage (and the float32 scales): move devices only.
        kept = {name: self._buffers[name] for name in self._storage if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._buffers[name]
            if after is not None and after.dtype != before.dtype:
                self._buffers[name] = before.to(after.device)
        probe = fn(torch.zeros((), dtype=self.dtype))  # follow `.to(dtype)` / `.float()` for the compute dtype
        if probe.is_floating_point():
            self.dtype = probe.dtype
        return self

    def dequantize_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., I] → [..., O]: dequantize the weight to x's dtype, then an ordinary linear."""
        return F.linear(x, self.dequantize_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class FP8Linear(_QuantizedLinear):
    """A Linear stored in block FP8: `weight` float8_e4m3fn [O, I], `weight_scale_inv` float32 [Go, Gi]."""

    _storage = ("weight", "weight_scale_inv")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        block: tuple[int, int] = FP8_BLOCK,
        dtype: torch.dtype = torch.bfloat16,
        activation_scheme: str = "weight_only",
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if activation_scheme not in ("weight_only", "dynamic"):
            raise ValueError(f"activation_scheme {activation_scheme!r}: choose 'weight_only' or 'dynamic'")
        self.in_features, self.out_features, self.block = in_features, out_features, tuple(block)
        self.dtype, self.activation_scheme = dtype, activation_scheme
        scale_shape = fp8_scale_shape((out_features, in_features), self.block)
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=FP8_DTYPE, device=device))
        self.register_buffer("weight_scale_inv", torch.empty(scale_shape, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, **kwargs: object) -> FP8Linear:
        """Quantize a dense weight [O, I] with our block quantizer."""
        out_features, in_features = weight.shape
        module = cls(in_features, out_features, bias is not None, device=weight.device, **kwargs)  # type: ignore[arg-type]
        module.weight, module.weight_scale_inv = fp8_quantize(weight, module.block)
        if bias is not None:
            module.bias = nn.Parameter(bias.detach().to(module.dtype), requires_grad=False)
        return module

    def dequantize_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return fp8_dequantize(self.weight, self.weight_scale_inv, dtype or self.dtype, self.block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation_scheme == "weight_only":
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        return F.linear(fp8_quantize_activation(x), self.dequantize_weight(torch.float32), bias).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"block={self.block}, dtype={self.dtype}, activation_scheme={self.activation_scheme}"
        )


class Int4Linear(_QuantizedLinear):
    """A Linear stored as compressed-tensors pack-quantized int4: `weight_packed`, `weight_scale`, `weight_shape`."""

    _storage = ("weight_packed", "weight_scale", "weight_shape")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        group_size: int = INT4_GROUP,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size, self.dtype = in_features, out_features, group_size, dtype
        shape = (out_features, in_features)
        self.register_buffer("weight_packed", torch.empty(int4_packed_shape(shape), dtype=torch.int32, device=device))
        self.register_buffer(
            "weight_scale", torch.empty(int4_scale_shape(shape, group_size), dtype=INT4_SCALE_DTYPE, device=device)
        )
        self.register_buffer("weight_shape", torch.tensor(shape, dtype=torch.int32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, **kwargs: object) -> Int4Linear:
        """Quantize a dense weight [O, I] with our group quantizer."""
        out_features, in_features = weight.shape
        module = cls(in_features, out_features, bias is not None, device=weight.device, **kwargs)  # type: ignore[arg-type]
        module.weight_packed, module.weight_scale, shape = int4_quantize(weight, module.group_size)
        module.weight_shape = shape.to(weight.device)
        if bias is not None:
            module.bias = nn.Parameter(bias.detach().to(module.dtype), requires_grad=False)
        return module

    def dequantize_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return int4_dequantize(
            self.weight_packed,
            self.weight_scale,
            (self.out_features, self.in_features),
            dtype or self.dtype,
            self.group_size,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"group_size={self.group_size}, dtype={self.dtype}"
        )

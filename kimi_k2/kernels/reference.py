"""Pure-torch products over the stored formats: the arithmetic of the C++ kernels, and the fallback path.

Two functions per concern:

* `blockwise_product` — exactly the kernels' arithmetic: per output row, the dot product of each scale block
  (FP8: 128 inputs; INT4: one group) is formed from the stored values and multiplied by its scale once,
  `y[m, o] = Σ_b scale[o, b] · Σ_{i∈b} q[o, i] x[m, i]`, all in float32. Used by tests to check the kernels to
  float32 rounding (only the order of the sums differs).
* `dequantized_rows` — rows [o0, o1) of the weight as a dense tensor (q · scale in float32, rounded once to the
  target dtype, as `quant_linear`'s dequantizers do). The fallback product dequantizes one tile of rows at a
  time and multiplies it, so no call ever holds a whole dequantized weight.

Legend: M rows of x, O outputs, I inputs, G blocks / groups along I.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kimi_k2.model.quant_linear import FP8_DTYPE, fp8_dequantize, int4_dequantize, int4_unpack


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def stored_values(fmt: str, data: torch.Tensor, in_features: int) -> torch.Tensor:
    """The stored numbers before scaling, float32 [O, I] (fp8 values, int4 integers, or the dense weight)."""
    if fmt == "int4":
        return int4_unpack(data, in_features).float()
    if fmt == "fp8":
        return data.view(FP8_DTYPE).float()
    return data.float()


def blockwise_product(
    x: torch.Tensor, fmt: str, data: torch.Tensor, scale: torch.Tensor | None, in_features: int, block: tuple[int, int]
) -> torch.Tensor:
    """x [M, I] float → float32 [M, O] with the kernels' arithmetic (see the module docstring)."""
    q = stored_values(fmt, data, in_features)  # (O, I)
    out_features = q.shape[0]
    if scale is None:
        return x.float() @ q.t()
    block_rows, block_cols = block
    groups = _ceil_div(in_features, block_cols)
    pad = groups * block_cols - in_features
    qb = F.pad(q, (0, pad)).view(out_features, groups, block_cols)  # (O, G, b)
    xb = F.pad(x.float(), (0, pad)).view(x.shape[0], groups, block_cols)  # (M, G, b)
    partial = torch.einsum("mgb,ogb->mog", xb, qb)  # (M, O, G) per-block dot products
    row_scale = scale.float().repeat_interleave(block_rows, dim=0)[:out_features]  # (O, G)
    return (partial * row_scale).sum(dim=-1)


def quantize_activations(x: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8-activation mode's quantizer: x [M, I] → (q float [M, G, 32] integers in [-127, 127] in input
    order, d [M, G] = amax / 127 per group) over the whole groups of 32 (G = I // 32)."""
    groups = x.shape[1] // group
    xg = x[:, : groups * group].float().view(x.shape[0], groups, group)
    d = xg.abs().amax(dim=-1) / 127
    inverse = torch.where(d > 0, 1.0 / d, torch.zeros_like(d)).unsqueeze(-1)  # float32, as the kernels compute it
    q = torch.round(xg * inverse).clamp_(-127, 127)
    return q, d


def int8_activation_product(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, in_features: int) -> torch.Tensor:
    """INT4 group-32 weights against int8 activations, the kernels' arithmetic: per whole group, the integer dot
    product Σ (u − 8)·q times weight scale × activation scale; a last partial group in float. float32 [M, O]."""
    q, d = quantize_activations(x)  # (M, G, 32), (M, G)
    groups = q.shape[1]
    w = int4_unpack(packed, in_features).float()  # (O, I) integers in [-8, 7]
    wg = w[:, : groups * 32].reshape(w.shape[0], groups, 32)
    dots = torch.einsum("mgk,ogk->mog", q.double(), wg.double())  # exact integers
    y = (dots * (scale[:, :groups].double().unsqueeze(0) * d.double().unsqueeze(1))).sum(-1)
    if groups * 32 < in_features:  # the partial group, float
        tail = w[:, groups * 32 :] * scale[:, groups:].float().repeat_interleave(32, dim=1)[:, : in_features - groups * 32]
        y = y + x[:, groups * 32 :].double() @ tail.double().t()
    return y.float()


def dequantized_rows(
    fmt: str,
    data: torch.Tensor,
    scale: torch.Tensor | None,
    in_features: int,
    block: tuple[int, int],
    rows: slice,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Rows `rows` of the weight, dense [n, I] in `dtype`. For fp8, `rows.start` must be a multiple of the
    block's rows (the fallback tiles are)."""
    start, stop = rows.start, rows.stop
    if fmt == "fp8":
        assert scale is not None and start % block[0] == 0
        blocks = slice(start // block[0], _ceil_div(stop, block[0]))
        return fp8_dequantize(data[start:stop].view(FP8_DTYPE), scale[blocks], dtype, block)
    if fmt == "int4":
        assert scale is not None
        return int4_dequantize(data[start:stop], scale[start:stop], (stop - start, in_features), dtype, block[1])
    return data[start:stop].to(dtype)

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

"""Cut a parameter's stored tensors to one rank's shard (`kimi_k2.parallel.layout`), formats kept.

A dense tensor is narrowed along the shard's dimension. Block FP8 keeps its `weight_scale_inv` blocks and INT4
its packed words and scale groups when the shard starts and ends on a block / group boundary (K2's shards all
do: 128-aligned heads and expert widths); a shard that does not is loaded dequantized instead (`aligned`), with
the same values. Row shards of a memory-mapped tensor stay views into the file when the caller allows; every
other piece is copied, so a rank holds its share and not the model.
"""

from __future__ import annotations

import torch

from kimi_k2.checkpoint.scheme import QuantScheme
from kimi_k2.checkpoint.validate import ParamSpec
from kimi_k2.model.quant_linear import INT4_PER_WORD
from kimi_k2.parallel.layout import Shard


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _unit(scheme: QuantScheme, dim: int) -> int:
    """The stored format's smallest cut along `dim`: an FP8 block, an INT4 scale group (inputs) or a row."""
    if scheme.method == "fp8":
        return scheme.block[dim]
    if scheme.method == "int4" and dim == 1:
        return scheme.group_size
    return 1


def aligned(p: ParamSpec, shard: Shard | None, scheme: QuantScheme) -> bool:
    """Whether quantized parameter `p`'s stored tensors can be cut at `shard` as they are."""
    if shard is None or shard.dim is None:
        return True
    unit = _unit(scheme, shard.dim)
    return shard.start % unit == 0 and (shard.stop % unit == 0 or shard.stop == p.shape[shard.dim])


def cut(tensors: dict[str, torch.Tensor], p: ParamSpec, shard: Shard, scheme: QuantScheme, *, keep_views: bool) -> dict[str, torch.Tensor]:
    """This rank's part of the tensors that store parameter `p` (the names `materialize` returned)."""
    if shard.dim is None:
        return tensors
    dim, start, stop = shard.dim, shard.start, shard.stop
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        role = name.rsplit(".", 1)[-1]
        if role == "weight_shape":  # INT4's logical [O, I]
            local = list(p.shape)
            local[dim] = shard.size
            out[name] = torch.tensor(local, dtype=t.dtype)
            continue
        unit = {"weight_scale_inv": scheme.block[dim] if scheme.method == "fp8" else 1,
                "weight_packed": INT4_PER_WORD if dim == 1 else 1,
                "weight_scale": scheme.group_size if dim == 1 else 1}.get(role, 1)
        piece = t.narrow(dim, start // unit, _ceil_div(stop, unit) - start // unit)
        out[name] = piece if keep_views and piece.is_contiguous() else piece.clone(memory_format=torch.contiguous_format)
    return out

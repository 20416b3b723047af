"""Where weights come from (a checkpoint on disk, or a model / state dict in memory) and how each becomes the
tensors of a target format: the one piece of logic shared by loading, saving and converting.

A *source* answers two questions per parameter of the unquantized model (a `ParamSpec`):
`dense(p, dtype)` — the tensor as a dense `dtype` tensor (dequantizing if it is stored quantized), and
`stored(p, target)` — its stored tensors, if they already are in the target scheme (so FP8 stays bit-exact FP8
instead of being dequantized and requantized). `materialize` combines them: pass-through when possible,
otherwise dense → our quantizer. Everything works one parameter at a time, so at most one parameter (plus its
quantization temporaries) is in flight.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO, Protocol

import torch
from torch import nn

from kimi_k2.checkpoint.safetensors_io import MappedFile, PlannedTensor, TensorInfo, read_tensor
from kimi_k2.checkpoint.scheme import QuantScheme
from kimi_k2.checkpoint.validate import CheckpointReport, ParamSpec
from kimi_k2.model.quant_linear import (
    FP8_BLOCK,
    FP8_DTYPE,
    INT4_GROUP,
    INT4_SCALE_DTYPE,
    FP8Linear,
    Int4Linear,
    fp8_dequantize,
    fp8_quantize,
    fp8_scale_shape,
    int4_dequantize,
    int4_packed_shape,
    int4_quantize,
    int4_scale_shape,
)


class WeightSource(Protocol):
    def dense(self, p: ParamSpec, dtype: torch.dtype) -> torch.Tensor: ...

    def stored(self, p: ParamSpec, target: QuantScheme) -> dict[str, torch.Tensor] | None: ...


def quantized_names(module: str, method: str) -> list[str]:
    if method == "fp8":
        return [f"{module}.weight", f"{module}.weight_scale_inv"]
    return [f"{module}.weight_packed", f"{module}.weight_scale", f"{module}.weight_shape"]


def target_tensors(p: ParamSpec, target: QuantScheme, dtype: torch.dtype) -> list[PlannedTensor]:
    """The tensors parameter `p` becomes in the target scheme (names, dtypes, shapes), in the official order."""
    if p.linear is None or not target.quantizes(p.linear):
        return [PlannedTensor(p.name, torch.float32 if p.fp32 else dtype, p.shape)]
    shape = (p.shape[0], p.shape[1])
    if target.method == "fp8":
        weight, scale = quantized_names(p.linear, "fp8")
        return [PlannedTensor(weight, FP8_DTYPE, p.shape), PlannedTensor(scale, torch.float32, fp8_scale_shape(shape, target.block))]
    packed, scale, shape_name = quantized_names(p.linear, "int4")
    return [
        PlannedTensor(packed, torch.int32, int4_packed_shape(shape)),
        PlannedTensor(scale, INT4_SCALE_DTYPE, int4_scale_shape(shape, target.group_size)),
        PlannedTensor(shape_name, torch.int32, (2,)),
    ]


def materialize(p: ParamSpec, source: WeightSource, target: QuantScheme, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Parameter `p` as the tensors of the target scheme (see `target_tensors`)."""
    if p.linear is None or not target.quantizes(p.linear):
        return {p.name: source.dense(p, torch.float32 if p.fp32 else dtype)}
    kept = source.stored(p, target)
    if kept is not None:
        return kept
    dense = source.dense(p, torch.float32)
    if target.method == "fp8":
        weight, scale = fp8_quantize(dense, target.block)
        return dict(zip(quantized_names(p.linear, "fp8"), (weight, scale)))
    return dict(zip(quantized_names(p.linear, "int4"), int4_quantize(dense, target.group_size)))


# ---------------------------------------------------------------------------------------------- from disk
class CheckpointReader:
    """Reads the tensors of a validated checkpoint, one at a time: with positioned reads into fresh tensors
    (see safetensors_io), or with `mmap=True` as views into the memory-mapped shards (`safetensors_io.MappedFile`:
    no copy; the OS page cache holds what is touched). Conversions (`.to(dtype)`, dequantizing) copy either way,
    so only tensors used as stored stay mapped."""

    def __init__(self, report: CheckpointReport, *, mmap: bool = False) -> None:
        report.raise_if_problems()
        assert report.scheme is not None
        self.report, self.scheme, self.mmap = report, report.scheme, mmap
        self._files: dict[Path, BinaryIO] = {}
        self._maps: dict[Path, MappedFile] = {}

    def info(self, name: str) -> TensorInfo:
        return self.report.info(name)

    def source_names(self, p: ParamSpec) -> list[str]:
        """The stored tensors parameter `p` is read from."""
        if p.linear is not None and self.scheme.quantizes(p.linear):
            return quantized_names(p.linear, self.scheme.method)
        return [p.name]

    def raw(self, name: str) -> torch.Tensor:
        shard = self.report.weight_map[name]
        info = self.report.headers[shard][name]
        if self.mmap:
            mapped = self._maps.get(shard)
            if mapped is None:
                mapped = self._maps[shard] = MappedFile(shard)
            view = mapped.tensor(info)
            if view is not None:
                return view
        file = self._files.get(shard)
        if file is None:
            file = self._files[shard] = open(shard, "rb")
        return read_tensor(file, info)

    def dense(self, p: ParamSpec, dtype: torch.dtype) -> torch.Tensor:
        if p.linear is None or not self.scheme.quantizes(p.linear):
            return self.raw(p.name).to(dtype)
        stored = self.stored(p, self.scheme)
        assert stored is not None
        if self.scheme.method == "fp8":
            weight, scale = stored.values()
            return fp8_dequantize(weight, scale, dtype, self.scheme.block)
        packed, scale, _ = stored.values()
        return int4_dequantize(packed, scale, (p.shape[0], p.shape[1]), dtype, self.scheme.group_size)

    def stored(self, p: ParamSpec, target: QuantScheme) -> dict[str, torch.Tensor] | None:
        if p.linear is None or not self.scheme.quantizes(p.linear) or target.method != self.scheme.method:
            return None
        if (target.block, target.group_size) != (self.scheme.block, self.scheme.group_size):
            return None
        out = {name: self.raw(name) for name in quantized_names(p.linear, self.scheme.method)}
        if self.scheme.method == "int4":
            shape_name = f"{p.linear}.weight_shape"
            found = [int(v) for v in out[shape_name]]
            if found != list(p.shape):
                raise ValueError(
                    f"{self.report.weight_map[shape_name].name}: tensor {shape_name}: expected {list(p.shape)}, found {found}"
                )
            out[shape_name] = out[shape_name].to(torch.int32)
        return out

    def close(self) -> None:
        """Close the files; mapped views stay valid (each keeps its mapping alive)."""
        for file in self._files.values():
            file.close()
        self._files.clear()
        self._maps.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- from memory
class StateSource:
    """A model's (or a plain state dict's) tensors. Quantized modules are recognised by their stored names;
    their block / group size comes from the FP8Linear / Int4Linear module, or the official defaults for a dict."""

    def __init__(self, model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> None:
        self.blocks: dict[str, tuple[int, int]] = {}
        self.groups: dict[str, int] = {}
        if isinstance(model_or_state, nn.Module):
            for name, module in model_or_state.named_modules():
                if isinstance(module, FP8Linear):
                    self.blocks[name] = module.block
                elif isinstance(module, Int4Linear):
                    self.groups[name] = module.group_size
            self.state: Mapping[str, torch.Tensor] = model_or_state.state_dict()
        else:
            self.state = model_or_state

    def _method(self, p: ParamSpec) -> str:
        if p.linear is None:
            return "none"
        if f"{p.linear}.weight_packed" in self.state:
            return "int4"
        if f"{p.linear}.weight_scale_inv" in self.state:
            return "fp8"
        return "none"

    def _get(self, name: str) -> torch.Tensor:
        try:
            return self.state[name]
        except KeyError:
            raise ValueError(f"state dict has no tensor {name}") from None

    def dense(self, p: ParamSpec, dtype: torch.dtype) -> torch.Tensor:
        method = self._method(p)
        if method == "none":
            return self._get(p.name).detach().to("cpu", dtype)
        assert p.linear is not None
        if method == "fp8":
            weight, scale = (self._get(n).detach().cpu() for n in quantized_names(p.linear, "fp8"))
            return fp8_dequantize(weight, scale, dtype, self.blocks.get(p.linear, FP8_BLOCK))
        packed, scale = (self._get(n).detach().cpu() for n in quantized_names(p.linear, "int4")[:2])
        return int4_dequantize(packed, scale, (p.shape[0], p.shape[1]), dtype, self.groups.get(p.linear, INT4_GROUP))

    def stored(self, p: ParamSpec, target: QuantScheme) -> dict[str, torch.Tensor] | None:
        method = self._method(p)
        if method != target.method or p.linear is None:
            return None
        if method == "fp8" and self.blocks.get(p.linear, FP8_BLOCK) != target.block:
            return None
        if method == "int4" and self.groups.get(p.linear, INT4_GROUP) != target.group_size:
            return None
        return {name: self._get(name).detach().cpu() for name in quantized_names(p.linear, method)}


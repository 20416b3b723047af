"""The safetensors file format, read and written by hand: headers without weight bytes, tensors one at a time.

Format: 8 bytes little-endian u64 `N`, then `N` bytes of JSON `{name: {"dtype", "shape", "data_offsets": [b, e]},
"__metadata__": {...}}`, then the data; offsets are relative to the end of the header.

Why not the `safetensors` package here: (1) validation must report a truncated or corrupt header as a message
naming the file, not a Rust panic, and must read no weight bytes; (2) a memory-mapped shard counts its touched
pages towards the process's resident set until it is unmapped, so reading a 17 GB shard through an mmap can
hold 17 GB resident. A positioned `readinto` straight into the tensor's own buffer holds exactly one tensor in
flight, and the writer streams tensors into a pre-planned header the same way. Files are byte-compatible with
the `safetensors` package (the tests read ours with it and write theirs with it).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

# safetensors dtype tag → torch dtype (the tags the format defines that torch can hold).
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TAGS: dict[torch.dtype, str] = {dtype: tag for tag, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors library enforces
_ALIGN = 8


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file; the message names the file."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str  # safetensors tag, e.g. "BF16", "F8_E4M3"
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


_SIZES: dict[str, int] = {tag: torch.empty((), dtype=dtype).element_size() for tag, dtype in DTYPES.items()}


def dtype_size(tag: str) -> int:
    return _SIZES[tag]


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header, reading only the header bytes. Raises SafetensorsError."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise SafetensorsError(f"{path}: truncated safetensors file: {size} bytes, not even the 8-byte header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise SafetensorsError(
                    f"{path}: corrupt or truncated safetensors header: it declares {header_len} header bytes, "
                    f"the file has {size - 8} after the length field"
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise SafetensorsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{path}: corrupt safetensors header: not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt safetensors header: expected a JSON object, found {type(header).__name__}")
    data_start = 8 + header_len
    data_size = size - data_start
    tensors: dict[str, TensorInfo] = {}
    problems: list[str] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            tag, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if tag not in DTYPES:
                problems.append(f"tensor {name}: unknown dtype {tag!r}")
                continue
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise TypeError
            if not (isinstance(begin, int) and isinstance(end, int)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            problems.append(f"tensor {name}: malformed entry {json.dumps(entry)[:200]}")
            continue
        nbytes = math.prod(shape) * dtype_size(tag)
        if end - begin != nbytes or begin < 0:
            problems.append(
                f"tensor {name}: data_offsets [{begin}, {end}] span {end - begin} bytes, "
                f"expected {nbytes} for {tag} {list(shape)}"
            )
        elif end > data_size:
            problems.append(
                f"tensor {name}: data ends at byte {end} of the data section but the file holds only {data_size} "
                "(truncated file)"
            )
        else:
            tensors[name] = TensorInfo(tag, tuple(shape), data_start + begin, nbytes)
    if problems:
        raise SafetensorsError(f"{path}: corrupt safetensors header:\n  " + "\n  ".join(problems))
    return tensors


def read_tensor(file: BinaryIO, info: TensorInfo) -> torch.Tensor:
    """Read one tensor's bytes with a positioned read into a fresh CPU tensor (no other copy)."""
    out = torch.empty(info.shape, dtype=info.torch_dtype)
    if info.nbytes == 0:
        return out
    view = memoryview(out.view(-1).view(torch.uint8).numpy())
    file.seek(info.start)
    got = file.readinto(view)
    if got != info.nbytes:
        raise SafetensorsError(f"{getattr(file, 'name', '?')}: short read: {got} of {info.nbytes} bytes at offset {info.start}")
    return out


class MappedFile:
    """A safetensors file mapped into memory; `tensor(info)` is a zero-copy view of one tensor's bytes.

    The mapping is private copy-on-write (`ACCESS_COPY`): torch gets a writable buffer, nothing written ever
    reaches the file, and untouched pages stay shared with the page cache. Each view keeps the mapping alive.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)

    def tensor(self, info: TensorInfo) -> torch.Tensor | None:
        """The tensor as a view into the mapping, or None where a view cannot be made (no bytes, or a start that
        is not a multiple of the element size: the caller then reads a copy)."""
        if info.nbytes == 0 or info.start % dtype_size(info.dtype):
            return None
        flat = torch.frombuffer(self._map, dtype=torch.uint8, count=info.nbytes, offset=info.start)
        return flat.view(info.torch_dtype).view(info.shape)


# ---------------------------------------------------------------------------------------------- writing
@dataclass(frozen=True, slots=True)
class PlannedTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class ShardWriter:
    """Write one safetensors file whose tensors are known in advance, then stream their bytes in order.

    The header is written first from the plan, so tensors can be produced one at a time and dropped.
    `write(name, tensor)` checks the name, dtype and shape against the plan.
    """

    def __init__(self, path: Path, plan: Iterable[PlannedTensor], metadata: dict[str, str] | None = None) -> None:
        self.path = path
        self.plan = list(plan)
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for item in self.plan:
            header[item.name] = {"dtype": TAGS[item.dtype], "shape": list(item.shape), "data_offsets": [offset, offset + item.nbytes]}
            offset += item.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % _ALIGN)
        self._next = 0
        self._file = open(path, "wb")
        self._file.write(struct.pack("<Q", len(encoded)))
        self._file.write(encoded)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.plan):
            raise ValueError(f"{self.path}: tensor {name} was not planned for this shard")
        want = self.plan[self._next]
        if name != want.name or tensor.dtype != want.dtype or tuple(tensor.shape) != want.shape:
            raise ValueError(
                f"{self.path}: expected tensor {want.name} {TAGS[want.dtype]} {list(want.shape)} next, "
                f"got {name} {TAGS.get(tensor.dtype, tensor.dtype)} {list(tensor.shape)}"
            )
        data = tensor.detach().to("cpu").contiguous().view(-1)
        if data.numel():
            self._file.write(memoryview(data.view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> None:
        missing = [p.name for p in self.plan[self._next :]]
        self._file.close()
        if missing:
            os.unlink(self.path)
            raise ValueError(f"{self.path}: {len(missing)} planned tensors were never written (first: {missing[0]})")

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()

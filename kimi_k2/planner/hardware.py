"""Accelerators the planner knows: memory, bandwidth, peak dense tensor FLOPs, FP8 support.

Memory is what the device reports as its total (nvidia-smi's MiB × 2^20 where we have it), not the
marketing "GB": an H200 "141 GB" shows 143,771 MiB. Bandwidth is the vendor's peak in bytes/s (decimal TB/s).
FLOPs are dense (no 2:4 sparsity) tensor-core peaks from the vendors' data sheets, rounded; GeForce cards
are quoted with fp32 accumulation. All figures are ceilings, used only for upper bounds. Unified-memory
machines (Apple M3 Ultra, DGX Spark) list the whole pool; the OS keeps part of it (macOS wires at most
~75% to the GPU by default), which the memory-utilisation factor should then cover.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MIB = 2**20
GIB = 2**30
TB = 10**12
TFLOP = 10**12


@dataclass(frozen=True, slots=True)
class GPU:
    key: str
    name: str
    memory_bytes: int
    bandwidth: float  # bytes/s
    bf16_flops: float  # dense FLOP/s
    fp8_flops: float | None  # None: no FP8 tensor cores (FP8 weights run weight-only, compute in bf16)
    source: str = ""

    @property
    def fp8(self) -> bool:
        return self.fp8_flops is not None


GPUS: dict[str, GPU] = {
    g.key: g
    for g in (
        GPU("h100", "NVIDIA H100 SXM 80GB", 81_559 * MIB, 3.35 * TB, 989 * TFLOP, 1979 * TFLOP, "NVIDIA H100 datasheet; nvidia-smi 81559 MiB"),
        GPU("h200", "NVIDIA H200 SXM 141GB", 143_771 * MIB, 4.8 * TB, 989 * TFLOP, 1979 * TFLOP, "NVIDIA H200 datasheet; nvidia-smi 143771 MiB"),
        GPU("h800", "NVIDIA H800 SXM 80GB", 81_559 * MIB, 3.35 * TB, 989 * TFLOP, 1979 * TFLOP, "H100 silicon, reduced NVLink (400 GB/s)"),
        GPU("h20", "NVIDIA H20 96GB", 97_871 * MIB, 4.0 * TB, 148 * TFLOP, 296 * TFLOP, "NVIDIA H20 spec; nvidia-smi 97871 MiB"),
        GPU("a100-80gb", "NVIDIA A100 SXM 80GB", 81_920 * MIB, 2.039 * TB, 312 * TFLOP, None, "NVIDIA A100 datasheet"),
        GPU("b200", "NVIDIA B200 180GB", 183_359 * MIB, 8.0 * TB, 2250 * TFLOP, 4500 * TFLOP, "NVIDIA HGX B200 spec; nvidia-smi 183359 MiB"),
        GPU("mi300x", "AMD Instinct MI300X 192GB", 192 * GIB, 5.3 * TB, 1307 * TFLOP, 2615 * TFLOP, "AMD MI300X datasheet"),
        GPU("rtx4090", "NVIDIA GeForce RTX 4090 24GB", 24_564 * MIB, 1.008 * TB, 165 * TFLOP, 330 * TFLOP, "NVIDIA Ada whitepaper"),
        GPU("rtx5090", "NVIDIA GeForce RTX 5090 32GB", 32_607 * MIB, 1.792 * TB, 209 * TFLOP, 419 * TFLOP, "NVIDIA Blackwell GeForce whitepaper"),
        GPU("m3-ultra", "Apple M3 Ultra 512GB (unified)", 512 * GIB, 0.819 * TB, 28 * TFLOP, None, "Apple Mac Studio (2025) spec"),
        GPU("dgx-spark", "NVIDIA DGX Spark GB10 128GB (unified)", 128 * GIB, 0.273 * TB, 125 * TFLOP, 250 * TFLOP, "NVIDIA DGX Spark spec (1 PFLOP FP4 sparse)"),
    )
}
GPU_ALIASES = {"a100": "a100-80gb", "4090": "rtx4090", "5090": "rtx5090", "m3ultra": "m3-ultra", "spark": "dgx-spark"}


def gpu(name: str) -> GPU:
    """Look a GPU up by key (case-insensitive); ValueError listing the known ones."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = GPU_ALIASES.get(key, key)
    try:
        return GPUS[key]
    except KeyError:
        raise ValueError(f"unknown GPU {name!r} for --gpu; known GPUs: {', '.join(GPUS)} (or --gpu-mem/--bandwidth)") from None


def custom_gpu(base: GPU | None, memory_gib: float | None = None, bandwidth_tbs: float | None = None) -> GPU:
    """`base` with its memory (GiB) and/or bandwidth (TB/s) replaced; with no base both are required."""
    if memory_gib is not None and memory_gib <= 0:
        raise ValueError(f"--gpu-mem={memory_gib}: must be a positive number of GiB")
    if bandwidth_tbs is not None and bandwidth_tbs <= 0:
        raise ValueError(f"--bandwidth={bandwidth_tbs}: must be a positive number of TB/s")
    if base is None:
        if memory_gib is None or bandwidth_tbs is None:
            raise ValueError("a custom GPU needs both --gpu-mem (GiB) and --bandwidth (TB/s)")
        base = GPU("custom", "custom", 0, 0.0, 0.0, None, "command line")
    return replace(
        base,
        key="custom",
        name=f"custom ({base.name})" if base.key != "custom" else "custom",
        memory_bytes=base.memory_bytes if memory_gib is None else int(memory_gib * GIB),
        bandwidth=base.bandwidth if bandwidth_tbs is None else bandwidth_tbs * TB,
        source="command line",
    )

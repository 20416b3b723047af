"""Loading holds no more memory than the finished model plus one tensor in flight (measured, in a subprocess).

A ~100M-parameter checkpoint (a 32K vocabulary and 16 wide experts, so the bound means something: the bf16
files are ~210 MB, the fp32 model ~410 MB) is written once per session in 3 shards. A fresh interpreter loads
it (bf16 → fp32, then FP8 kept as FP8) and reports its resident-set growth per load: `VmHWM` (peak, reset
through /proc/self/clear_refs before each load) minus `VmRSS` before it. (Not `ru_maxrss`: Linux carries it
across `execve`, so the child would report the forking pytest process's peak.) The bound is
final model bytes + the largest stored tensor + 48 MiB for the allocator and Python; a loader that held the
whole bf16 checkpoint besides the model (what `safetensors.torch.load_file` per shard plus a state dict does)
would exceed it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kimi_k2.config import ModelConfig
from kimi_k2.model.quant_linear import fp8_quantize
from kimi_k2.model.transformer import build_model
from tests.checkpoint_files import K2_FP8_QUANT, K2_TINY, is_linear_weight

BIG = {
    **K2_TINY,
    "vocab_size": 32768,
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "moe_intermediate_size": 512,
    "num_hidden_layers": 2,
    "n_routed_experts": 16,
    "num_experts_per_tok": 4,
    "q_lora_rank": 256,
    "kv_lora_rank": 128,
}
SLACK = 48 * 2**20

MEASURE = """
import ctypes, gc, json, sys, torch
import kimi_k2.checkpoint.loader as loader

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

# One-time library initialisation, not load memory: the first meta-device init op imports torch's
# decompositions (~800 modules, ~70 MB), whatever the model size.
torch.empty(1, device="meta").normal_()
results = []
libc = ctypes.CDLL("libc.so.6")
for path, weights, dtype, mmap in json.loads(sys.argv[1]):
    gc.collect()
    libc.malloc_trim(0)  # give the previous load's freed heap back, so it cannot hide this load's growth
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    before = status("VmRSS")
    model = loader.load_model(path, dtype=getattr(torch, dtype), weights=weights, mmap=mmap)
    peak = status("VmHWM")
    loaded = status("VmRSS")
    with torch.no_grad():
        model(torch.arange(8).unsqueeze(0))
    ran = status("VmRSS")
    results.append({"before": before, "peak": peak, "loaded": loaded, "ran": ran,
                    "model_bytes": sum(t.nbytes for t in model.state_dict().values())})
    del model
print(json.dumps(results))
"""


def _write(directory: Path, tensors: dict[str, torch.Tensor], quantization_config: dict | None) -> int:
    """Three shards + index + config; returns the largest stored tensor's bytes."""
    directory.mkdir()
    config = {**BIG, **({"quantization_config": quantization_config} if quantization_config else {})}
    (directory / "config.json").write_text(json.dumps(config))
    names = list(tensors)
    per = math.ceil(len(names) / 3)
    weight_map = {}
    for k in range(3):
        file = f"model-{k + 1}-of-3.safetensors"
        part = {n: tensors[n] for n in names[k * per : (k + 1) * per]}
        save_file(part, directory / file)
        weight_map.update({n: file for n in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return max(t.nbytes for t in tensors.values())


@pytest.fixture(scope="session")
def big_checkpoints(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    root = tmp_path_factory.mktemp("big")
    cfg = ModelConfig.from_hf(BIG)
    generator = torch.Generator().manual_seed(0)
    bf16, fp8 = {}, {}
    for name, meta in build_model(cfg).state_dict().items():
        value = torch.empty(meta.shape).uniform_(-0.03, 0.03, generator=generator)
        if name.endswith("e_score_correction_bias"):
            bf16[name] = fp8[name] = value
            continue
        bf16[name] = value.to(torch.bfloat16)
        if is_linear_weight(name) and name != "lm_head.weight":
            fp8[name], fp8[f"{name}_scale_inv"] = fp8_quantize(value)
        else:
            fp8[name] = bf16[name]
    return {
        "bf16": (root / "bf16", _write(root / "bf16", bf16, None)),
        "fp8": (root / "fp8", _write(root / "fp8", fp8, K2_FP8_QUANT)),
    }


def measure(big_checkpoints, cases: list[tuple[str, str, str]], mmap: bool) -> list[dict[str, int]]:
    runs = [(str(big_checkpoints[stored][0]), weights, dtype, mmap) for stored, weights, dtype in cases]
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_memory_mapped_load_reads_no_weight_bytes(big_checkpoints):
    """FP8 kept in bf16: every tensor is used as stored, so a mapped load is views only — the resident set
    grows by far less than the model (the bound: 5% of it + slack), and only by the pages a forward touches
    after that (here all of them: one forward reads every weight it uses)."""
    (m,) = measure(big_checkpoints, [("fp8", "fp8", "bfloat16")], mmap=True)
    assert m["model_bytes"] > 150e6
    assert m["peak"] - m["before"] <= 0.05 * m["model_bytes"] + SLACK, (m["peak"] - m["before"]) / 2**20
    assert m["ran"] - m["before"] <= m["model_bytes"] + SLACK


def test_peak_memory_is_the_model_plus_one_tensor(big_checkpoints):
    cases = [("bf16", "dequantize", "float32"), ("fp8", "fp8", "bfloat16")]
    for (stored, weights, dtype), m in zip(cases, measure(big_checkpoints, cases, mmap=False)):
        growth = m["peak"] - m["before"]
        largest = big_checkpoints[stored][1]
        assert m["model_bytes"] > 150e6  # big enough for the bound to mean something
        assert growth <= m["model_bytes"] + largest + SLACK, (stored, weights, dtype, growth / 2**20, m["model_bytes"] / 2**20)

"""`kimi-k2 plan --ram`: the planner's CPU figures against what the engine really holds.

The built-in nano model is converted to each format the engine keeps as stored; `LLM(path, mmap=False)` reads
every tensor into RAM, and the bytes of every distinct storage the model and the fast runner hold must equal the
planner's `resident_bytes` within 2%.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from kimi_k2.assets import default_model_dir
from kimi_k2.checkpoint.writer import convert_checkpoint
from kimi_k2.config import preset
from kimi_k2.engine.llm import LLM
from kimi_k2.kernels.weight import ConcatWeight, ExpertBank, Weight
from kimi_k2.planner.cpu import cpu_plan


def _tensors(obj, seen: set[int]):
    """Every tensor reachable from the runner's prepared weights (dataclasses, lists, Weight objects)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (Weight, ConcatWeight)):
        for part in obj.parts:
            yield from (t for t in (part.data, part.scale) if t is not None)
    elif isinstance(obj, ExpertBank):
        for w in (*obj.gate, *obj.up, *obj.down):
            yield from _tensors(w, seen)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item, seen)
    elif dataclasses.is_dataclass(obj) and id(obj) not in seen:
        seen.add(id(obj))
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name), seen)


def engine_weight_bytes_of(model, runner) -> int:
    """Bytes of every distinct storage the model and its fast runner hold."""
    tensors = list(model.state_dict().values())
    tensors += list(_tensors(runner.layers, set())) + list(_tensors(runner.lm_head, set()))
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.numel()}
    return sum(storages.values())


def engine_weight_bytes(llm: LLM) -> int:
    return engine_weight_bytes_of(llm.model, llm.engine.runner)


@pytest.mark.parametrize("fmt", ["fp8", "int4", "bf16"])
def test_planner_resident_bytes_equal_the_engine_within_2_percent(fmt, tmp_path):
    path = convert_checkpoint(default_model_dir(), tmp_path / fmt, fmt)
    llm = LLM(path, mmap=False, num_kv_blocks=16)
    plan = cpu_plan(llm.config, fmt, ram_bandwidth=1e11)
    held = engine_weight_bytes(llm)
    assert abs(held - plan.resident_bytes) <= 0.02 * plan.resident_bytes, (held, plan.resident_bytes)


def test_cpu_plan_of_k2_thinking_int4():
    """K2-Thinking as stored: 594 GB of files; routed experts are 96% of it, so memory-mapped decode keeps only
    ~30 GB hot; a token reads its 8 experts of 60 MoE layers plus every other weight once."""
    plan = cpu_plan(preset("kimi-k2"), "int4", ram_bytes=768 * 2**30, ram_bandwidth=460e9)
    assert 585e9 < plan.linear_bytes < 600e9
    assert plan.routed_bytes > 0.95 * plan.linear_bytes
    assert plan.fits_in_ram and plan.runs_mapped
    assert 25e9 < plan.mapped_hot_bytes < 35e9
    assert plan.decode_tokens_per_s_bound == pytest.approx(460e9 / plan.token_bytes)
    small = cpu_plan(preset("kimi-k2"), "int4", ram_bytes=128 * 2**30, ram_bandwidth=460e9)
    assert not small.fits_in_ram and small.runs_mapped


def test_plan_cli_ram_prints_the_cpu_plan():
    out = subprocess.run(
        [sys.executable, "-m", "kimi_k2.cli", "plan", "--weights", "int4", "--ram", "768", "--context", "8192", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    plan = json.loads(out)
    assert plan["fits_in_ram"] is True and plan["fmt"] == "int4" and plan["decode_tokens_per_s_bound"] > 0
    with pytest.raises(ValueError, match="keeps fp32, bf16, fp8 and int4"):
        cpu_plan(preset("tiny"), "q4_k", ram_bandwidth=1e11)

"""The engine on checkpoints kept in their stored format: the built-in nano model converted to block FP8 and to
INT4 gives, kept as stored and run by the kernels, the same greedy replies as the same checkpoint dequantized
on load; and the fast runner on kept weights agrees with the reference runner."""

from __future__ import annotations

import pytest
import torch

from kimi_k2.assets import default_model_dir
from kimi_k2.checkpoint.writer import convert_checkpoint
from kimi_k2.engine.llm import LLM
from kimi_k2.engine.sampling_params import SamplingParams
from kimi_k2.model.quant_linear import FP8Linear, Int4Linear

QUESTIONS = [
    "What's the weather in Paris?",
    "Compute 12 * 34",
    "Hello! Who are you?",
]
GREEDY = SamplingParams(temperature=0, max_tokens=24)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.fixture(scope="module", params=["fp8", "int4"])
def converted(request, tmp_path_factory):
    return request.param, convert_checkpoint(default_model_dir(), tmp_path_factory.mktemp(request.param), request.param)


def replies(llm: LLM) -> list[list[int]]:
    return [llm.chat([{"role": "user", "content": q}], GREEDY, tools=TOOLS).token_ids for q in QUESTIONS]


def test_kept_formats_give_the_greedy_replies_of_the_dequantized_checkpoint(converted):
    fmt, path = converted
    kept = LLM(path, num_kv_blocks=64)  # default: weights="auto" keeps the stored format
    kind = FP8Linear if fmt == "fp8" else Int4Linear
    assert isinstance(kept.model.model.layers[1].mlp.experts[0].down_proj, kind)
    assert kept.engine.runner.mode == "fast"
    dequantized = LLM(path, weights="dequantize", num_kv_blocks=64)
    assert isinstance(dequantized.model.model.layers[1].mlp.experts[0].down_proj, torch.nn.Linear)
    expected = replies(dequantized)
    assert replies(kept) == expected
    in_ram = LLM(path, mmap=False, num_kv_blocks=64)  # read into RAM instead of memory-mapped: same tokens
    assert replies(in_ram) == expected


def test_fast_runner_on_kept_weights_matches_the_reference_runner(converted):
    _, path = converted
    fast = LLM(path, num_kv_blocks=64)
    reference = LLM(path, num_kv_blocks=64, runner="reference")
    prompts = [[5, 17, 99, 3, 250, 41, 8], [7] * 20, list(range(100, 140))]
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=3)
    for a, b in zip(fast.generate(prompts, params), reference.generate(prompts, params)):
        assert a.token_ids == b.token_ids
        for x, y in zip(a.logprobs, b.logprobs):
            assert abs(x.logprob - y.logprob) < 1e-4

"""The engine's user-facing surfaces: text prompts and stop strings through a byte-level K2 tokenizer, defaults
from an HF-layout checkpoint (generation_config.json, KV pool sized by the planner's formula), the asyncio
interface, and the sampler's filters and penalties.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from kimi_k2.engine.async_engine import AsyncLLM
from kimi_k2.engine.core import KEPT_SPECIAL_TOKENS
from kimi_k2.engine.llm import LLM
from kimi_k2.engine.sampler import SampleRequest, apply_penalties, filtered_probs, sample
from kimi_k2.engine.sampling_params import SamplingParams
from kimi_k2.model.generate import greedy_decode
from kimi_k2.planner.kv import kv_block_bytes, kv_pool_blocks
from kimi_k2.tokenizer.tokenizer import Tokenizer
from tests.hf_models import make_hf_model, save_hf_model
from tests.test_engine_exact import tiny_model
from tests.threads import one_thread  # noqa: F401  (autouse: one torch thread in this module)




@pytest.fixture(scope="module")
def byte_tokenizer():
    """256 byte tokens + K2's 256 special slots = 512 ids, the tiny preset's vocabulary."""
    return Tokenizer({bytes([i]): i for i in range(256)})


@pytest.fixture(scope="module")
def text_llm(byte_tokenizer):
    return LLM(tiny_model(seed=1), tokenizer=byte_tokenizer, num_kv_blocks=64, block_size=4)


def test_text_prompt_default_stops_and_stream_deltas(text_llm, byte_tokenizer):
    assert byte_tokenizer.im_end_id in text_llm.default_stop_token_ids
    assert byte_tokenizer.eos_id in text_llm.default_stop_token_ids
    assert text_llm.default_sampling_params().temperature == 0.6  # no generation_config: K2's recommendation
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    final = text_llm.generate("Hello, K2!", params)[0]
    ids = byte_tokenizer.encode("Hello, K2!", allow_special=True)
    assert final.token_ids == greedy_decode(text_llm.model, ids, 24)
    detok = byte_tokenizer.detokenizer(skip_special_tokens=True, keep=KEPT_SPECIAL_TOKENS)
    assert final.text == detok.feed(final.token_ids) + detok.finish()
    deltas = list(text_llm.stream("Hello, K2!", params))
    assert "".join(d.text for d in deltas) == final.text
    assert [t for d in deltas for t in d.token_ids] == final.token_ids
    assert deltas[-1].finished and all(not d.finished for d in deltas[:-1])
    assert deltas[-1].num_prompt_tokens == len(ids) and deltas[-1].num_completion_tokens == 24


def test_stop_string_cuts_text_and_never_leaks_into_the_stream(text_llm):
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, skip_special_tokens=False)
    full = text_llm.generate("abc", params)[0].text
    assert len(full) >= 12
    stop = full[8:11]
    at = full.find(stop)
    stopped = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, skip_special_tokens=False, stop=[stop])
    out = text_llm.generate("abc", stopped)[0]
    assert out.text == full[:at] and out.finish_reason == "stop" and out.stop_reason == stop
    streamed = ""
    for delta in text_llm.stream("abc", stopped):
        streamed += delta.text
        assert stop not in streamed
    assert streamed == full[:at]
    assert text_llm.stats().kv_blocks_used == 0


def test_hf_checkpoint_defaults_and_pool_sized_by_planner(tmp_path):
    hf = make_hf_model("q_lora", seed=3)
    directory = save_hf_model(hf, tmp_path / "ckpt")
    generation = {"temperature": 0.3, "top_p": 0.95, "top_k": 20, "min_p": 0.01, "repetition_penalty": 1.05,
                  "eos_token_id": [1, 5], "do_sample": True}
    (directory / "generation_config.json").write_text(json.dumps(generation))
    budget = 3 * 2**20 + 12345
    llm = LLM(directory, kv_cache_memory=budget, block_size=8)
    assert llm.default_temperature == 0.3
    assert llm.default_stop_token_ids == [1, 5]
    assert llm.sampling_defaults == {"temperature": 0.3, "top_p": 0.95, "top_k": 20, "min_p": 0.01, "repetition_penalty": 1.05}
    defaults = llm.default_sampling_params()
    assert (defaults.top_p, defaults.top_k, defaults.min_p, defaults.repetition_penalty) == (0.95, 20, 0.01, 1.05)
    stats = llm.stats()
    assert stats.kv_blocks_total == kv_pool_blocks(llm.config, budget, 8, 4)
    assert stats.kv_pool_bytes == stats.kv_blocks_total * kv_block_bytes(llm.config, 8, 4) <= budget
    prompt = torch.randint(2, hf.config.vocab_size, (11,)).tolist()
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0]
    with torch.no_grad():
        theirs = hf.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, 11, dtype=torch.long), max_new_tokens=20,
            min_new_tokens=20, do_sample=False, pad_token_id=0,
        )[0, 11:].tolist()
    assert out.token_ids == theirs
    with pytest.raises(ValueError, match="text prompts need a tokenizer"):
        llm.generate("no tokenizer here")


def test_async_engine_streams_concurrent_requests_and_aborts():
    llm = LLM(tiny_model(seed=2), num_kv_blocks=64, block_size=4)
    engine = AsyncLLM(llm)
    prompts = {"a": [5, 6, 7], "b": list(range(40, 60)), "c": [9] * 12}
    expected = {rid: greedy_decode(llm.model, p, 8) for rid, p in prompts.items()}

    async def collect(rid, prompt, params):
        return [d async for d in engine.generate(rid, prompt, params)]

    async def main():
        params = SamplingParams(temperature=0, max_tokens=8)
        runs = await asyncio.gather(*(collect(rid, p, params) for rid, p in prompts.items()))
        # an aborted request ends with finish_reason "abort" and frees its blocks
        long = SamplingParams(temperature=0, max_tokens=200)
        seen = []
        async for delta in engine.generate("long", list(range(100, 130)), long):
            seen.append(delta)
            if len(seen) == 3:
                engine.abort("long")
        with pytest.raises(ValueError, match="outside the vocabulary"):
            await collect("bad", [10_000], params)
        return runs, seen

    try:
        runs, seen = asyncio.run(main())
    finally:
        engine.shutdown()
    for rid, deltas in zip(prompts, runs):
        assert [t for d in deltas for t in d.token_ids] == expected[rid]
        assert deltas[-1].finish_reason == "length"
    assert seen[-1].finished and seen[-1].finish_reason == "abort" and len(seen) < 10
    stats = engine.stats()
    assert stats.kv_blocks_used == 0 and stats.num_running == 0 and stats.num_waiting == 0


def test_a_bad_generation_config_value_names_the_file_and_field():
    from kimi_k2.engine.llm import sampling_defaults

    with pytest.raises(ValueError, match="ckpt/generation_config.json: top_p=1.5"):
        sampling_defaults({"top_p": 1.5}, "ckpt/generation_config.json")
    with pytest.raises(ValueError, match="generation_config.json: top_k='40' is not a number"):
        sampling_defaults({"top_k": "40"})
    assert sampling_defaults({"temperature": None, "max_new_tokens": 9}) == {}


def test_sampler_filters():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03]))
    assert torch.count_nonzero(filtered_probs(logits, SamplingParams(temperature=1, top_k=2))) == 2
    assert torch.count_nonzero(filtered_probs(logits, SamplingParams(temperature=1, top_p=0.7))) == 2
    assert torch.count_nonzero(filtered_probs(logits, SamplingParams(temperature=1, top_p=0.76))) == 3
    assert torch.count_nonzero(filtered_probs(logits, SamplingParams(temperature=1, min_p=0.2))) == 3
    probs = filtered_probs(logits, SamplingParams(temperature=1, top_k=3))
    assert torch.allclose(probs[:3], torch.tensor([0.5, 0.25, 0.15]) / 0.9)
    cold = filtered_probs(logits, SamplingParams(temperature=0.1))
    assert cold[0] > 0.99


def test_sampler_penalties_follow_openai_and_hf_semantics():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0])
    row = SampleRequest(SamplingParams(temperature=0, repetition_penalty=2.0), None, [0], [1])
    assert apply_penalties(logits, row).tolist() == [1.0, -2.0, 0.5, 0.0]
    row = SampleRequest(SamplingParams(temperature=0, presence_penalty=0.5, frequency_penalty=0.25), None, [3], [2, 2, 0])
    assert apply_penalties(logits, row).tolist() == [2.0 - 0.75, -1.0, 0.5 - 1.0, 0.0]
    tokens, _ = sample(logits.unsqueeze(0), [SampleRequest(SamplingParams(temperature=0, presence_penalty=2.0), None, [], [0])])
    assert tokens == [2]


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    gen = torch.Generator().manual_seed(0)
    row = SampleRequest(SamplingParams(temperature=1.0), gen, [], [])
    counts = torch.bincount(torch.tensor([sample(logits.unsqueeze(0), [row])[0][0] for _ in range(3000)]), minlength=3)
    assert torch.allclose(counts / 3000, torch.tensor([0.6, 0.3, 0.1]), atol=0.03)


def test_ids_beyond_the_tokenizer_are_never_sampled_and_a_larger_tokenizer_is_refused():
    import pytest
    import torch

    from kimi_k2 import LLM, SamplingParams
    from kimi_k2.config import preset
    from kimi_k2.model import random_model

    class Vocab:  # what the engine reads of a tokenizer here
        def __init__(self, n: int) -> None:
            self.vocab_size, self.stop_token_ids = n, frozenset()

    model = random_model(preset("tiny"), seed=3)
    with torch.no_grad():
        model.lm_head.weight[400:] += 5.0  # make the ids a small tokenizer cannot decode the likeliest
    engine = LLM(model, num_kv_blocks=64).engine
    engine.tokenizer, engine.sampleable_vocab = None, 400  # as if a 400-id tokenizer were attached
    engine.add_request("r", [1, 2, 3], SamplingParams(temperature=1.0, max_tokens=16, seed=0))
    tokens = []
    while engine.has_unfinished():
        for delta in engine.step():
            tokens += delta.token_ids
    assert tokens and max(tokens) < 400
    with pytest.raises(ValueError, match="vocab_size is 512"):
        LLM(random_model(preset("tiny")), tokenizer=Vocab(600), num_kv_blocks=8)


def _draws(logits: torch.Tensor, params: SamplingParams, prompt=(), output=(), n: int = 20) -> list[int]:
    gen = torch.Generator().manual_seed(0)
    row = SampleRequest(params, None if params.greedy else gen, list(prompt), list(output))
    return [sample(logits.unsqueeze(0), [row])[0][0] for _ in range(n)]


EXTREME_LOGITS = torch.tensor([1.0, 3.0, -2.0, 2.5, float("-inf")])  # -inf: an id the tokenizer cannot decode


@pytest.mark.parametrize("temperature", [1e-45, 1e-30, 1e-6, 5e-5])
def test_tiny_temperature_is_greedy(temperature):
    assert SamplingParams(temperature=temperature).greedy == (temperature < 1e-5)
    assert _draws(EXTREME_LOGITS, SamplingParams(temperature=temperature)) == [1] * 20
    probs = filtered_probs(EXTREME_LOGITS, SamplingParams(temperature=temperature))
    assert torch.isfinite(probs).all() and probs[1] > 0.99  # the filter itself is safe too, greedy or not


def test_extreme_top_p_min_p_and_top_k_keep_the_top_token():
    for params in (SamplingParams(temperature=1.0, top_p=1e-300), SamplingParams(temperature=2.0, top_p=5e-324),
                   SamplingParams(temperature=1.0, min_p=1.0), SamplingParams(temperature=1.0, top_k=1)):
        probs = filtered_probs(EXTREME_LOGITS, params)
        assert probs.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0], params
        assert _draws(EXTREME_LOGITS, params) == [1] * 20


@pytest.mark.parametrize("penalty", [1e-300, 5e-324, 1e-30, 1e30, 1e300])
@pytest.mark.parametrize("temperature", [0.0, 1e-40, 0.7, 2.0])
def test_extreme_repetition_penalty_is_finite_and_follows_its_direction(penalty, temperature):
    params = SamplingParams(temperature=temperature, repetition_penalty=penalty)
    penalised = apply_penalties(EXTREME_LOGITS, SampleRequest(params, None, [0, 4], [2]))
    assert not penalised.isnan().any() and penalised[4] == float("-inf")  # a masked id stays masked
    assert torch.isfinite(penalised[:4]).all()
    tokens = _draws(EXTREME_LOGITS, params, prompt=[0, 4], output=[2])
    assert all(0 <= t < 4 for t in tokens)
    if penalty < 1:  # seen tokens are boosted: the seen positive logit 1.0 becomes the largest (or ties for it)
        assert tokens == [0] * 20 or temperature > 0
        assert penalised[0] >= penalised[1]
    else:  # seen tokens are pushed down: the unseen ones win
        assert penalised[0] < 1e-20 and penalised[2] <= -2.0
        if temperature < 1e-5:
            assert tokens == [1] * 20


def test_zero_probability_tokens_never_win_the_race():
    logits = torch.tensor([0.0, float("-inf"), float("-inf")])
    gen = torch.Generator().manual_seed(0)
    row = SampleRequest(SamplingParams(temperature=1.0), gen, [], [])
    zero_race = torch.zeros(3)
    original = torch.Tensor.exponential_
    try:  # a race time of exactly 0 (possible for exponential_) must not let 0/0 = NaN win the argmax
        torch.Tensor.exponential_ = lambda self, *a, **k: self.copy_(zero_race)
        assert sample(logits.unsqueeze(0), [row])[0] == [0]
    finally:
        torch.Tensor.exponential_ = original


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", float("inf")), ("temperature", float("nan")), ("repetition_penalty", float("inf")),
     ("seed", 2**64), ("seed", -(2**63) - 1)],
)
def test_out_of_range_sampling_params_name_the_field(field, value):
    from kimi_k2.engine.sampling_params import SamplingParamsError

    with pytest.raises(SamplingParamsError, match=field) as info:
        SamplingParams(**{field: value})
    assert info.value.field == field
    SamplingParams(seed=2**64 - 1), SamplingParams(seed=-(2**63))  # the edges are fine

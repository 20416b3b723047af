"""The engine's per-request logits hook: token bitmasks, logit_bias, masked ids and llguidance grammars, and that
a constrained request never changes what its unconstrained neighbours in the batch sample."""

from __future__ import annotations

import json

import pytest
import torch

from kimi_k2.engine.grammar import GrammarError
from kimi_k2.engine.llm import LLM
from kimi_k2.engine.sampling_params import SamplingParams
from kimi_k2.engine.token_bitmask import apply_token_bitmask, apply_token_bitmask_reference, unpack_bitmask
from kimi_k2.tokenizer.tokenizer import Tokenizer
from tests.test_engine_exact import tiny_model
from tests.threads import one_thread  # noqa: F401  (autouse: one torch thread in this module)

OBJECT_GRAMMAR = 'start: %json{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], ' \
                 '"additionalProperties": false, "x-guidance": {"whitespace_flexible": false}}'


@pytest.fixture(scope="module")
def byte_tokenizer():
    return Tokenizer({bytes([i]): i for i in range(256)})


@pytest.fixture(scope="module")
def llm(byte_tokenizer):
    return LLM(tiny_model(seed=3), tokenizer=byte_tokenizer, num_kv_blocks=128, block_size=4)


@pytest.mark.parametrize("vocab", [1, 31, 32, 33, 100, 512])
def test_vectorised_bitmask_matches_the_per_token_definition(vocab):
    gen = torch.Generator().manual_seed(vocab)
    words = (vocab + 31) // 32
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, words), generator=gen, dtype=torch.int64).to(torch.int32)
    logits = torch.randn(3, vocab + 5, generator=gen)  # ids past the mask's words are forbidden too
    fast, slow = logits.clone(), logits.clone()
    apply_token_bitmask(fast, bitmask)
    apply_token_bitmask_reference(slow, bitmask)
    assert torch.equal(fast, slow)
    assert unpack_bitmask(bitmask, vocab).shape == (3, vocab)
    assert torch.equal(torch.from_numpy(unpack_bitmask(bitmask, vocab)).bool(), fast[:, :vocab] > float("-inf"))


def test_logit_bias_forces_and_bans_tokens(llm, byte_tokenizer):
    forced = SamplingParams(temperature=1.0, seed=1, max_tokens=12, ignore_eos=True, logit_bias={ord("k"): 100})
    assert llm.generate("hello", forced)[0].token_ids == [ord("k")] * 12
    free = llm.generate("hello", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].token_ids
    banned = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, masked_token_ids=sorted(set(free)))
    out = llm.generate("hello", banned)[0].token_ids
    assert not set(out) & set(free)
    bias_ban = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logit_bias={t: -100 for t in set(free)})
    assert not set(llm.generate("hello", bias_ban)[0].token_ids) & set(free)


def test_out_of_range_hook_fields_name_the_field(llm):
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={1: 101})
    with pytest.raises(ValueError, match="logit_bias: token id 9999"):
        llm.generate([1, 2], SamplingParams(logit_bias={9999: 1}))
    with pytest.raises(ValueError, match="masked_token_ids: token id 9999"):
        llm.generate([1, 2], SamplingParams(masked_token_ids=[9999]))
    with pytest.raises(GrammarError, match="grammar: .*undefined_rule"):
        llm.generate([1, 2], SamplingParams(grammar="start: undefined_rule"))
    assert llm.engine.num_requests == 0  # refused before it was scheduled


def test_grammar_output_is_valid_json_and_grammars_compile_once(llm):
    params = SamplingParams(temperature=1.0, seed=5, max_tokens=200, grammar=OBJECT_GRAMMAR)
    outs = llm.generate(["a", "b", "c"], params)
    for out in outs:
        assert out.finish_reason == "stop"
        value = json.loads(out.text)
        assert set(value) == {"a"} and isinstance(value["a"], int)
    assert llm.engine.grammar_compiler().compiled == 1


def test_unconstrained_neighbours_sample_exactly_what_they_sample_alone(llm):
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = ["one prompt", "another one", "a third"]
    alone = [llm.generate(p, greedy)[0].token_ids for p in prompts]
    constrained = [
        SamplingParams(temperature=0, max_tokens=16, grammar=OBJECT_GRAMMAR),
        SamplingParams(temperature=0.8, seed=2, max_tokens=16, logit_bias={ord("x"): 50}, masked_token_ids=[ord("y")]),
    ]
    batch = ["constrained", prompts[0], "biased", prompts[1], prompts[2]]
    params = [constrained[0], greedy, constrained[1], greedy, greedy]
    outs = llm.generate(batch, params)
    assert [outs[1].token_ids, outs[3].token_ids, outs[4].token_ids] == alone
    json.loads(outs[0].text)


def test_logprobs_report_the_raw_distribution_under_a_hook(llm):
    plain = llm.generate("abc", SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, logprobs=2))[0]
    token = plain.token_ids[0]
    other = (token + 1) % 256
    biased = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, logprobs=2, logit_bias={other: 100})
    out = llm.generate("abc", biased)[0]
    assert out.token_ids == [other]
    assert out.logprobs[0].top == plain.logprobs[0].top  # the model's own alternatives, not the biased ones


def test_grammar_state_survives_preemption(byte_tokenizer):
    # 10 blocks of 4 tokens for 4 sequences that each need ~6: the scheduler must preempt and recompute; the
    # grammar is fed each sampled token once, so a recomputed sequence goes on where its grammar is
    small = LLM(tiny_model(seed=3), tokenizer=byte_tokenizer, num_kv_blocks=10, block_size=4, max_num_seqs=4)
    grammar = 'start: %json{"type": "array", "items": {"enum": ["ab", "cd"]}, "minItems": 5, "maxItems": 5, ' \
              '"x-guidance": {"whitespace_flexible": false}}'
    outs = small.generate(["p1", "p2", "p3", "p4"], SamplingParams(temperature=1.0, seed=9, max_tokens=30, grammar=grammar))
    assert small.stats().num_preemptions > 0
    for out in outs:
        value = json.loads(out.text)
        assert len(value) == 5 and set(value) <= {"ab", "cd"} and out.finish_reason == "stop"

"""Exactness against HF transformers' `DeepseekV3ForCausalLM` (a dev dependency).

Random HF models of several small configs are saved with `save_pretrained` and loaded with
`kimi_k2.load_model`; logits must agree in float32 to 1e-4 × max(1, max |logit|) and greedy decoding with our
cached absorbed path must reproduce HF's greedy `generate` token for token.
"""

from __future__ import annotations

import zlib

import pytest
import torch

import kimi_k2
from kimi_k2.model.generate import greedy_decode
from tests.hf_models import VARIANTS, make_hf_model, save_hf_model


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    hf = make_hf_model(request.param, seed=zlib.crc32(request.param.encode()) % 1000)
    directory = save_hf_model(hf, tmp_path_factory.mktemp(request.param))
    return hf, kimi_k2.load_model(directory)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    bound = 1e-4 * max(1.0, theirs.abs().max().item())
    assert (ours - theirs).abs().max().item() <= bound


@pytest.mark.parametrize("attention", ["naive", "absorbed"])
def test_logits_match_hf_for_ragged_batch(pair, attention):
    hf, ours = pair
    ours.set_paths(attention=attention)
    lengths = [37, 20, 5]
    ids = torch.randint(2, hf.config.vocab_size, (len(lengths), max(lengths)), generator=torch.Generator().manual_seed(3))
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        mine = ours(ids, attention_mask=mask)
    for row, n in enumerate(lengths):
        assert_close(mine[row, :n], theirs[row, :n])
    ours.set_paths(attention="naive")


def test_greedy_decode_matches_hf_generate(pair):
    hf, ours = pair
    prompt = torch.randint(2, hf.config.vocab_size, (1, 11), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
        )[0, 11:].tolist()
    ours.set_paths(attention="absorbed")
    mine = greedy_decode(ours, prompt[0].tolist(), 32, use_cache=True)
    ours.set_paths(attention="naive")
    assert mine == theirs


def test_routing_uses_bias_for_selection_only(pair):
    """A non-zero correction bias must change which experts run but never scale their outputs."""
    hf, ours = pair
    gate = ours.model.layers[-1].mlp.gate
    assert gate.e_score_correction_bias.abs().sum() > 0
    x = torch.randn(64, ours.config.hidden_size)
    routing = gate(x)
    scores = torch.sigmoid(x @ gate.weight.T)
    picked = scores.gather(1, routing.experts)
    expected = picked / picked.sum(-1, keepdim=True) * ours.config.routed_scaling_factor
    assert torch.allclose(routing.weights, expected, atol=1e-6)

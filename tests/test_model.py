"""The K2 model against itself: the fast paths agree with the reference paths."""

from __future__ import annotations

import pytest
import torch

from kimi_k2.config import preset
from kimi_k2.model import ContiguousLatentCache, ForwardStats, random_model
from kimi_k2.model.attention import is_causal_mask, masked_max_logits
from kimi_k2.model.generate import greedy_decode
from kimi_k2.model.moe import HAS_GROUPED_MM, experts_grouped, experts_grouped_mm, experts_loop
from kimi_k2.model.norm import rms_norm, rms_norm_reference
from kimi_k2.model.rope import apply_rope, apply_rope_complex, rope_cis, rope_cos_sin, rope_inv_freq, yarn_correction_range


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= 1e-4 * max(1.0, a.abs().max().item())


@pytest.fixture(scope="module")
def tiny():
    return random_model(preset("tiny"), seed=1).eval()


def test_k2_yarn_range_is_19_to_20():
    cfg = preset("kimi-k2")
    assert yarn_correction_range(64, 50000.0, 4096, 1.0, 1.0) == (19, 20)
    inv = rope_inv_freq(cfg)
    plain = 1.0 / (50000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    assert torch.equal(inv[:20], plain[:20])
    assert torch.allclose(inv[20:], plain[20:] / 32.0)


def test_k2_softmax_scale_matches_spec():
    assert preset("kimi-k2").softmax_scale == pytest.approx(0.13086079996295005, rel=1e-15)
    cfg = preset("kimi-k2").replace(rope_scaling={**preset("kimi-k2").rope_scaling, "factor": 64.0})
    assert cfg.softmax_scale == pytest.approx(0.14467962580268923, rel=1e-15)


def test_rope_rotates_interleaved_pairs():
    x = torch.randn(3, 8)
    cos, sin = rope_cos_sin(torch.tensor([1.0, 0.5, 0.25, 0.125]), torch.arange(3))
    y = apply_rope(x, cos, sin)
    # pair i = (x[2i], x[2i+1]) rotated by pos * inv_freq[i]: norms of pairs are preserved
    assert torch.allclose(x.view(3, 4, 2).norm(dim=-1), y.view(3, 4, 2).norm(dim=-1), atol=1e-6)
    angle = 2 * 0.5  # position 2, frequency 0.5
    a, b = x[2, 2], x[2, 3]
    assert y[2, 2].item() == pytest.approx((a * torch.cos(torch.tensor(angle)) - b * torch.sin(torch.tensor(angle))).item(), abs=1e-6)


@pytest.mark.parametrize("shape", [(1, 8), (1, 16), (3, 8, 16), (2, 5, 4, 64), (5, 6), (2, 8, 64)])
def test_rope_complex_matches_rope_to_the_last_bit(shape):
    """The complex product equals the real rotation up to one rounding per component (an FMA where the complex
    kernel vectorises differently); the engine's shapes: a query slice per head, a key row, R = 8 (tiny) to 64."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen) * 5
    positions = torch.randint(0, 100_000, shape[:-1], generator=gen)
    cos, sin = rope_cos_sin(rope_inv_freq(preset("kimi-k2"))[: shape[-1] // 2], positions, 1.3)
    one_ulp = dict(rtol=2**-22, atol=2**-22)
    torch.testing.assert_close(apply_rope_complex(x, rope_cis(cos, sin)), apply_rope(x, cos, sin), **one_ulp)
    # a strided slice (the engine ropes the tail of each head's query in place) and an odd offset
    wide = torch.randn(*shape[:-1], shape[-1] + 3, generator=gen)
    got = apply_rope_complex(wide[..., 3:], rope_cis(cos, sin))
    torch.testing.assert_close(got, apply_rope(wide[..., 3:], cos, sin), **one_ulp)


def test_rms_norm_fast_path_is_bit_identical_to_the_formula():
    gen = torch.Generator().manual_seed(2)
    for shape in [(1, 1024), (7, 384), (2, 3, 160)]:
        x = torch.randn(shape, generator=gen, requires_grad=True) * 4
        weight = (1 + 0.3 * torch.randn(shape[-1], generator=gen)).requires_grad_()
        fast, reference = rms_norm(x, weight, 1e-6), rms_norm_reference(x, weight, 1e-6)
        assert torch.equal(fast, reference)
        grad = torch.randn(shape, generator=gen)
        assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(fast, (x, weight), grad), torch.autograd.grad(reference, (x, weight), grad)))


def test_absorbed_matches_naive(tiny):
    ids = torch.randint(0, tiny.config.vocab_size, (2, 33))
    with torch.no_grad():
        naive = tiny.set_paths(attention="naive")(ids)
        absorbed = tiny.set_paths(attention="absorbed")(ids)
    tiny.set_paths(attention="naive")
    assert close(naive, absorbed)


@pytest.mark.parametrize("padded", [True, False], ids=["padded-mask", "causal"])
def test_fused_matches_naive_in_outputs_gradients_and_max_logits(padded):
    """Training's fast attention path (fused SDPA) against the reference, on a ragged padded batch (additive
    mask) and on packed windows (the causal kernel)."""
    ids = torch.randint(0, preset("tiny").vocab_size, (2, 29))
    attention_mask = torch.ones(2, 29, dtype=torch.long)
    if padded:
        attention_mask[0, :4] = 0  # left padding: queries 0-3 of row 0 see no real key (fully masked rows)
        attention_mask[1, 21:] = 0  # right padding
    runs = {}
    for path in ("naive", "fused"):
        model = random_model(preset("tiny"), seed=3).train().set_paths(attention=path)
        stats = ForwardStats()
        logits = model(ids, attention_mask=attention_mask, stats=stats)
        (logits.float() * attention_mask.unsqueeze(-1)).square().mean().backward()
        runs[path] = logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, stats
    (naive, naive_grads, naive_stats), (fused, fused_grads, fused_stats) = runs["naive"], runs["fused"]
    assert close(naive, fused)
    assert naive_grads.keys() == fused_grads.keys() and len(naive_grads) > 10
    for name, grad in naive_grads.items():
        assert close(grad, fused_grads[name]), name
    assert len(fused_stats.max_logits) == preset("tiny").num_hidden_layers
    for a, b in zip(naive_stats.max_logits, fused_stats.max_logits):
        assert close(a, b)


def test_masked_max_logits_matches_the_full_product():
    """QK-Clip's statistic computed in query chunks equals the max over the whole masked score matrix."""
    q, k = torch.randn(2, 3, 150, 8), torch.randn(2, 3, 150, 8)
    causal = torch.ones(150, 150, dtype=torch.bool).tril().expand(2, 1, 150, 150)
    ragged = causal.clone()
    ragged[0, :, :, :40] = False  # row 0 never sees its first 40 keys
    ragged[:, :, :, 100:] = False  # and no query sees keys 100..
    for mask in (causal, ragged):
        full = torch.matmul(q, k.transpose(-1, -2)).masked_fill(~mask, float("-inf")).amax(dim=(0, 2, 3))
        for chunk in (1, 16, 64, 512):
            torch.testing.assert_close(masked_max_logits(q, k, mask, chunk), full)  # products' rounding may differ
    nothing = torch.zeros_like(causal)
    assert torch.equal(masked_max_logits(q, k, nothing), torch.full((3,), float("-inf")))


def test_is_causal_mask():
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    assert is_causal_mask(causal.expand(3, 5, 5))
    padded = causal.expand(3, 5, 5).clone()
    padded[1, :, 0] = False
    assert not is_causal_mask(padded)
    assert not is_causal_mask(torch.ones(3, 1, 5, dtype=torch.bool))  # a decode step over a cache


def test_grouped_experts_match_loop(tiny):
    moe = tiny.model.layers[1].mlp
    x = torch.randn(37, tiny.config.hidden_size)
    routing = moe.gate(x)
    with torch.no_grad():
        assert close(experts_loop(moe.experts, x, routing), experts_grouped(moe.experts, x, routing))


@pytest.mark.parametrize("tokens", [1, 3, 16, 37])
def test_grouped_mm_experts_match_loop(tiny, tokens):
    """The engine's expert path (PyTorch's grouped matmul over stacked weights) against the reference."""
    if not HAS_GROUPED_MM:
        pytest.skip("this torch has no torch.nn.functional.grouped_mm (the engine falls back to per-expert products)")
    moe = tiny.model.layers[1].mlp
    x = torch.randn(tokens, tiny.config.hidden_size)
    routing = moe.gate(x)
    w13 = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in moe.experts]).detach()
    w2 = torch.stack([e.down_proj.weight for e in moe.experts]).detach()
    with torch.no_grad():
        assert close(experts_loop(moe.experts, x, routing), experts_grouped_mm(x, routing, w13, w2))


def test_cached_decode_matches_full_forward(tiny):
    ids = torch.randint(0, tiny.config.vocab_size, (1, 24))
    for path in ("naive", "absorbed"):
        tiny.set_paths(attention=path)
        cache = ContiguousLatentCache(tiny.config, 1, 24)
        with torch.no_grad():
            full = tiny(ids)
            cache.prepare(torch.arange(0, 10).unsqueeze(0))
            parts = [tiny(ids[:, :10], positions=torch.arange(0, 10).unsqueeze(0), cache=cache)]
            for t in range(10, 24):
                pos = torch.tensor([[t]])
                cache.prepare(pos)
                parts.append(tiny(ids[:, t : t + 1], positions=pos, cache=cache))
        assert close(full, torch.cat(parts, dim=1)), path
    tiny.set_paths(attention="naive")


def test_greedy_with_cache_equals_without(tiny):
    prompt = torch.randint(0, tiny.config.vocab_size, (12,)).tolist()
    tiny.set_paths(attention="absorbed")
    cached = greedy_decode(tiny, prompt, 20, use_cache=True)
    tiny.set_paths(attention="naive")
    assert cached == greedy_decode(tiny, prompt, 20, use_cache=False)


def test_padding_does_not_change_real_tokens(tiny):
    a = torch.randint(0, tiny.config.vocab_size, (1, 9))
    padded = torch.cat([a, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 9 + [0] * 5])
    with torch.no_grad():
        assert close(tiny(a), tiny(padded, attention_mask=mask)[:, :9])


def test_stats_collect_max_logits_and_expert_load(tiny):
    stats = ForwardStats()
    ids = torch.randint(0, tiny.config.vocab_size, (2, 16))
    with torch.no_grad():
        tiny(ids, stats=stats)
    cfg = tiny.config
    assert len(stats.max_logits) == cfg.num_hidden_layers
    assert stats.max_logits[0].shape == (cfg.num_attention_heads,)
    assert len(stats.expert_counts) == cfg.num_moe_layers
    assert int(stats.expert_counts[0].sum()) == 2 * 16 * cfg.num_experts_per_tok


def test_meta_build_allocates_nothing():
    from kimi_k2.model import build_model

    model = build_model(preset("kimi-k2"))
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) + 60 * 384 == 1_026_408_232_448

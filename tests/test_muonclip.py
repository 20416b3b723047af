"""MuonClip against references: torch.optim.Muon / AdamW, the QK-Clip guarantee, the router-bias rule, WSD."""

from __future__ import annotations

import math

import pytest
import torch

from kimi_k2.config import preset
from kimi_k2.model import ForwardStats, random_model
from kimi_k2.train import MuonClip
from kimi_k2.train.balance import bias_step, max_violation, routers, update_router_bias_
from kimi_k2.train.muon import adamw_update, zeropower_via_newtonschulz5
from kimi_k2.train.muonclip import param_groups
from kimi_k2.train.qk_clip import attention_layers, qk_clip_
from kimi_k2.train.schedule import wsd_lr

SHAPES = [(48, 24), (24, 80), (32, 32)]  # tall (transposed inside NS), wide, square


def _matrices(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in SHAPES]


def _quadratic_loss(params: list[torch.Tensor], step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    return sum(((torch.randn(6, p.shape[1], generator=g) @ p.T) ** 2).sum() for p in params)


def test_muon_matches_torch_muon_match_rms_adamw():
    ours, theirs = _matrices(0), _matrices(0)
    opt_ours = MuonClip(ours, lr=0.02, weight_decay=0.1, qk_clip_tau=None)
    opt_theirs = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn="match_rms_adamw")
    for step in range(6):
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            _quadratic_loss(params, step).backward()
            opt.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert any((a - m).abs().max() > 1e-2 for a, m in zip(ours, _matrices(0)))  # the weights really moved


def test_newton_schulz_flattens_the_spectrum():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(64, 32, generator=g) @ torch.diag(torch.logspace(-1, 1, 32))  # condition number 100
    for dtype in (torch.bfloat16, torch.float32):
        out = zeropower_via_newtonschulz5(m, dtype=dtype)
        assert out.shape == m.shape and out.dtype == dtype
        s = torch.linalg.svdvals(out.float())
        assert 0.5 < s.min() and s.max() < 1.3, (dtype, s.min(), s.max())
    with pytest.raises(ValueError, match="2-D"):
        zeropower_via_newtonschulz5(torch.ones(2, 3, 4))


def test_update_rms_matches_adamw_scale():
    """0.2·sqrt(max(n, m)) scaling: a full-rank step moves the weights with RMS ≈ 0.2·lr."""
    p = torch.nn.Parameter(torch.zeros(96, 256))
    p.grad = torch.randn(96, 256)
    MuonClip([p], lr=1.0, weight_decay=0.0, qk_clip_tau=None, ns_dtype="float32").step()
    rms = p.detach().pow(2).mean().sqrt().item()
    assert 0.15 < rms < 0.25


def test_adamw_update_matches_torch_adamw():
    ours, theirs = _matrices(1), _matrices(1)
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ours]
    ref = torch.optim.AdamW(theirs, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for step in range(1, 6):
        for p in ours:
            p.grad = None
        _quadratic_loss(ours, step).backward()
        for p, (m, v) in zip(ours, state):
            adamw_update(p, p.grad, m, v, step, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
        ref.zero_grad()
        _quadratic_loss(theirs, step).backward()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_param_groups_put_each_matrix_in_the_right_rule():
    model = random_model(preset("tiny"))
    groups = {g["name"]: g for g in param_groups(model)}
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for p in groups["muon"]["params"]}
    adamw = {names[id(p)] for p in groups["adamw"]["params"]}
    no_decay = {names[id(p)] for p in groups["adamw_no_decay"]["params"]}
    assert adamw == {"model.embed_tokens.weight", "lm_head.weight"}
    assert all("norm" in n or n.endswith(".bias") for n in no_decay) and groups["adamw_no_decay"]["weight_decay"] == 0
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in muon  # every expert matrix on its own
    assert "model.layers.0.self_attn.kv_b_proj.weight" in muon
    assert len(muon) + len(adamw) + len(no_decay) == len(names)
    with pytest.raises(ValueError, match="2-D matrices only"):
        MuonClip([torch.nn.Parameter(torch.ones(4))])
    all_adamw = param_groups(model, use_muon=False)
    assert all(not g["use_muon"] for g in all_adamw)


# ---------------------------------------------------------------------- QK-Clip
def _one_layer(q_lora_rank: int | None) -> torch.nn.Module:
    cfg = preset("tiny").replace(num_hidden_layers=1, q_lora_rank=q_lora_rank)
    model = random_model(cfg, seed=3)
    attn = attention_layers(model)[0]
    with torch.no_grad():  # make heads 0 and 2 "hot": their logits grow by 30x
        q = (attn.q_b_proj if q_lora_rank else attn.q_proj).weight.view(attn.n_heads, attn.nope_dim + attn.rope_dim, -1)
        q[[0, 2]] *= 30.0
        attn.kv_b_proj.weight.mul_(3.0)
    return model


def _scores(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Per-head scaled scores [B, H, S, S] of the only layer (the same math as MLA.attend_naive)."""
    attn = attention_layers(model)[0]
    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    cos, sin = model.rope(positions)
    x = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))
    q_nope, q_pe = attn.project_query(x, cos, sin)
    c_kv, k_pe = attn.project_latent(x, cos, sin)
    k_nope = attn.kv_b_proj(c_kv).unflatten(-1, (attn.n_heads, -1))[..., : attn.nope_dim]
    s = torch.einsum("bshn,bthn->bhst", q_nope, k_nope) + torch.einsum("bshr,btr->bhst", q_pe, k_pe)
    return s * attn.softmax_scale


@pytest.mark.parametrize("q_lora_rank", [32, None])
def test_qk_clip_caps_hot_heads_and_leaves_the_others(q_lora_rank):
    model = _one_layer(q_lora_rank)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    stats = ForwardStats()
    with torch.no_grad():
        model(ids, stats=stats)
    before = _scores(model, ids).detach()
    causal = torch.ones(24, 24, dtype=torch.bool).tril()
    recorded = stats.max_logits[0]
    torch.testing.assert_close(recorded, before.masked_fill(~causal, -1e30).amax(dim=(0, 2, 3)))
    tau = float(recorded.sort().values[-3])  # between the hot heads and the rest: exactly 2 heads exceed it
    hot = recorded > tau
    assert hot.tolist() == [True, False, True, False]

    gamma = qk_clip_(model, stats.max_logits, tau)[0]
    after = _scores(model, ids).detach()
    new_max = after.masked_fill(~causal, -1e30).amax(dim=(0, 2, 3))
    assert torch.all(new_max[hot] <= tau * (1 + 1e-5)) and torch.allclose(new_max[hot], torch.tensor(tau), rtol=1e-5)
    torch.testing.assert_close(after[:, hot], before[:, hot] * gamma[hot].view(1, -1, 1, 1), rtol=1e-5, atol=1e-5)
    assert torch.equal(after[:, ~hot], before[:, ~hot])  # untouched heads: bit-identical logits
    assert torch.equal(gamma[~hot], torch.ones(2))


def test_qk_clip_scales_exactly_the_spec_rows():
    model = _one_layer(32)
    attn = attention_layers(model)[0]
    n, r, v, h = attn.nope_dim, attn.rope_dim, attn.v_dim, attn.n_heads
    q0, kv0, kva0 = attn.q_b_proj.weight.clone(), attn.kv_b_proj.weight.clone(), attn.kv_a_proj_with_mqa.weight.clone()
    gamma = qk_clip_([attn], [torch.tensor([400.0, 1.0, 100.0, 50.0])], tau=100.0)[0]
    assert gamma.tolist() == [0.25, 1.0, 1.0, 1.0]  # at τ exactly: not clipped
    q, kv = attn.q_b_proj.weight.view(h, n + r, -1), attn.kv_b_proj.weight.view(h, n + v, -1)
    q0, kv0 = q0.view(h, n + r, -1), kv0.view(h, n + v, -1)
    torch.testing.assert_close(q[0, :n], q0[0, :n] * 0.5)  # q_nope × sqrt(γ)
    torch.testing.assert_close(q[0, n:], q0[0, n:] * 0.25)  # q_rope × γ
    torch.testing.assert_close(kv[0, :n], kv0[0, :n] * 0.5)  # k_nope × sqrt(γ)
    assert torch.equal(kv[0, n:], kv0[0, n:])  # v rows untouched
    assert torch.equal(q[1:], q0[1:]) and torch.equal(kv[1:], kv0[1:])
    assert torch.equal(attn.kv_a_proj_with_mqa.weight, kva0)  # the shared rotary key is never scaled
    with pytest.raises(ValueError, match="one value per head"):
        qk_clip_([attn], [torch.ones(3)], tau=1.0)


def test_muonclip_step_applies_qk_clip_to_every_layer():
    model = random_model(preset("tiny"))
    opt = MuonClip.for_model(model, lr=1e-3, qk_clip_tau=5.0, ns_dtype="float32")
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    stats = ForwardStats()
    model(ids, stats=stats).float().logsumexp(-1).mean().backward()
    opt.step(max_logits=[torch.tensor([10.0, 1.0, 1.0, 1.0])] * 3)
    assert len(opt.last_clip_factors) == 3 and all(g.tolist() == [0.5, 1.0, 1.0, 1.0] for g in opt.last_clip_factors)
    off = MuonClip.for_model(model, qk_clip_tau=None, ns_dtype="float32")
    off.step(max_logits=[torch.tensor([10.0, 1.0, 1.0, 1.0])] * 3)
    assert off.last_clip_factors == []


# ---------------------------------------------------------------------- load balancing
def test_bias_step_follows_the_sign_rule():
    load = torch.tensor([10, 2, 4, 4])  # mean 5
    assert bias_step(load, 0.01).tolist() == pytest.approx([-0.01, 0.01, 0.01, 0.01])
    assert max_violation(load) == pytest.approx(1.0)
    assert max_violation(torch.zeros(4)) == 0.0


def test_bias_update_moves_load_toward_balance():
    cfg = preset("tiny").replace(n_group=1, topk_group=1)
    model = random_model(cfg, seed=0)
    ids = torch.randint(0, cfg.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    inputs: list[torch.Tensor] = []
    hooks = [gate.register_forward_pre_hook(lambda _, args: inputs.append(args[0])) for gate in routers(model)]
    with torch.no_grad():
        model(ids)
        for gate, x in zip(routers(model), inputs):  # point experts 0 and 1 at the tokens' mean direction
            gate.weight[:2] = 3 * x.mean(0) / x.mean(0).norm()
    for hook in hooks:
        hook.remove()
    imbalance = []
    for _ in range(15):
        stats = ForwardStats()
        with torch.no_grad():
            model(ids, stats=stats)
        imbalance.append(update_router_bias_(model, stats.expert_counts, speed=0.05))
    per_step = [sum(layers) / len(layers) for layers in imbalance]  # MaxVio, mean over the 2 MoE layers
    first, last = per_step[0], sum(per_step[-4:]) / 4  # a fixed batch makes the sign rule oscillate: average
    assert first > 2.0 and last < 0.5 * first, per_step
    with pytest.raises(ValueError, match="MoE layers"):
        update_router_bias_(model, [torch.ones(8)], speed=0.1)


# ---------------------------------------------------------------------- schedule
def test_wsd_schedule_warms_up_holds_and_decays_to_min():
    kw = dict(peak_lr=1.0, total_steps=100, warmup_steps=10, decay_steps=20, min_lr_ratio=0.1)
    lrs = [wsd_lr(s, **kw) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(lr == 1.0 for lr in lrs[10:80])
    assert all(a >= b for a, b in zip(lrs[80:], lrs[81:]))
    assert lrs[99] == pytest.approx(0.1) and lrs[80] == pytest.approx(1.0)
    assert lrs[89] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 9 / 19)))
    with pytest.raises(ValueError, match="must fit"):
        wsd_lr(0, peak_lr=1.0, total_steps=10, warmup_steps=8, decay_steps=5, min_lr_ratio=0.1)

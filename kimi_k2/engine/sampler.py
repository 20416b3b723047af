"""Logits → next tokens for a batch of sequences with different sampling parameters.

Order (as vLLM and HF apply them): penalties (repetition over prompt + output; presence and frequency over the
output, OpenAI's formula `logit -= frequency × count + presence × [count > 0]`), then greedy argmax when
temperature is 0, else temperature, top-k, top-p (smallest set whose probability reaches top_p), min-p, and a
draw. Reported logprobs are those of the model's raw distribution (`log_softmax` of the unprocessed logits),
which is what vLLM reports by default.

Numerical safety over the whole accepted range: a temperature below 1e-5 is greedy (`SamplingParams.greedy`);
logits are shifted by their maximum before dividing by the temperature, so the top token's scaled logit is 0
and nothing overflows; the repetition penalty is applied in float64 and clamped to finite float32 values (1e-300
is 0 in float32: a logit divided by it would be +inf, a masked -inf times it NaN); top-p always keeps the most likely token (`top_p × total` can
underflow to 0); tokens of probability 0 can never win the race (0 / e is -1 here, never NaN).

Reproducibility: every sequence owns a `torch.Generator` (seeded from `params.seed`, or from the engine's
generator when no seed is given), and a draw is `argmax(p / e)` with `e ~ Exp(1)` drawn from that generator
alone — the exponential-race form of sampling from p. A row's draw therefore depends only on its own logits
and its own generator, never on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kimi_k2.engine.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The chosen token's logprob and the top alternatives (token id, logprob), best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(slots=True)
class SampleRequest:
    """One row to sample: its params, its generator, and the tokens the penalties look at."""

    params: SamplingParams  # temperature already resolved (not None)
    generator: torch.Generator | None  # None when greedy
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]


def apply_penalties(logits: torch.Tensor, row: SampleRequest) -> torch.Tensor:
    """logits [V] → penalised logits [V] (a new tensor)."""
    p = row.params
    logits = logits.clone()
    vocab = logits.shape[-1]
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(list(row.prompt_token_ids) + list(row.output_token_ids), dtype=torch.long)
        seen = seen[seen < vocab].unique()
        values = logits[seen].double()  # float64: a penalty of 1e-300 is 0 in float32 (-inf × 0 would be NaN)
        scaled = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        finite = torch.finfo(logits.dtype).max
        logits[seen] = torch.where(values == float("-inf"), values, scaled.clamp(-finite, finite)).to(logits.dtype)
    if (p.presence_penalty or p.frequency_penalty) and row.output_token_ids:
        out = torch.tensor(list(row.output_token_ids), dtype=torch.long)
        counts = torch.bincount(out[out < vocab], minlength=vocab).to(logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits [V] → probabilities [V] after temperature, top-k, top-p and min-p (renormalised)."""
    assert params.temperature is not None and params.temperature > 0
    logits = logits.float()
    # shifted so the top logit is 0: a tiny temperature sends the others to -inf, never the top one to +inf
    probs = ((logits - logits.max()) / params.temperature).softmax(-1)
    vocab = probs.shape[-1]
    if params.top_k > 0 and params.top_k < vocab:
        kth = probs.topk(params.top_k).values[-1]
        probs = probs.masked_fill(probs < kth, 0.0)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass strictly above each token
        drop_sorted = before >= params.top_p * sorted_probs.sum()
        drop_sorted[0] = False  # the top token always survives (top_p × total may underflow to 0)
        probs = probs.masked_fill(torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted), 0.0)
    if params.min_p > 0.0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    return probs / probs.sum()


def sample_row(logits: torch.Tensor, row: SampleRequest) -> int:
    """One token from logits [V] (float32)."""
    if row.params.uses_penalties:
        logits = apply_penalties(logits, row)
    if row.params.greedy:
        return int(logits.argmax())
    probs = filtered_probs(logits, row.params)
    race = torch.empty_like(probs).exponential_(1.0, generator=row.generator)
    # a zero-probability token must never win, even against a race time of 0 (0 / 0 is NaN, and argmax takes NaN)
    return int(torch.where(probs > 0, probs / race, -1.0).argmax())


def token_logprobs(logits: torch.Tensor, token_id: int, top: int) -> TokenLogprob:
    """Raw-model logprob of `token_id` and the `top` most likely alternatives, from logits [V]."""
    logp = logits.float().log_softmax(-1)
    alternatives: tuple[tuple[int, float], ...] = ()
    if top > 0:
        values, ids = logp.topk(top)
        alternatives = tuple(zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token_id, float(logp[token_id]), alternatives)


def sample(
    logits: torch.Tensor, rows: Sequence[SampleRequest], raw_logits: torch.Tensor | None = None
) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits [N, V] for N rows → N token ids and (when a row asks) their logprobs, taken from `raw_logits`
    [N, V] when given (the model's logits before the logits hook), else from `logits`."""
    logits = logits.float()
    raw_logits = logits if raw_logits is None else raw_logits.float()
    tokens: list[int] = []
    logprobs: list[TokenLogprob | None] = []
    simple_greedy = [r.params.greedy and not r.params.uses_penalties for r in rows]
    argmax = logits.argmax(-1).tolist() if any(simple_greedy) else []
    for i, row in enumerate(rows):
        token = argmax[i] if simple_greedy[i] else sample_row(logits[i], row)
        tokens.append(token)
        k = row.params.logprobs
        logprobs.append(None if k is None else token_logprobs(raw_logits[i], token, k))
    return tokens, logprobs

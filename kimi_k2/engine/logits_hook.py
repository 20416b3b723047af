"""The per-request logits hook: bias, a fixed token mask and a grammar, applied to a step's sampled rows.

A request whose params use none of them has no hook (`make_hook` returns None) and its row is not touched:
no copy, no mask, so an unconstrained request samples exactly what it samples alone (tests check it in a
batch mixed with constrained ones). For the hooked rows of a step: `logit_bias` is added, `masked_token_ids`
are set to -inf, and the grammar rows get their bitmasks in one `fill_bitmasks` call and one vectorised
`apply_token_bitmask` over just those rows. After sampling, `advance` feeds each grammar its row's token.

Shapes: N sampled rows, V vocabulary, G rows with a grammar.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kimi_k2.engine.grammar import GrammarCompiler
from kimi_k2.engine.sampling_params import SamplingParams
from kimi_k2.engine.token_bitmask import apply_token_bitmask

log = logging.getLogger("kimi_k2")


@dataclass(eq=False)
class LogitsHook:
    bias_ids: torch.Tensor | None = None  # (k,) long
    bias_values: torch.Tensor | None = None  # (k,) float32
    masked_ids: torch.Tensor | None = None  # (m,) long
    matcher: Any = None  # llguidance.LLMatcher


def make_hook(params: SamplingParams, compiler: GrammarCompiler | None) -> LogitsHook | None:
    """The hook of a request, or None when its params change no logit."""
    if not params.uses_logits_hook:
        return None
    hook = LogitsHook()
    if params.logit_bias:
        hook.bias_ids = torch.tensor(list(params.logit_bias), dtype=torch.long)
        hook.bias_values = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32)
    if params.masked_token_ids:
        hook.masked_ids = torch.tensor(params.masked_token_ids, dtype=torch.long)
    if params.grammar is not None:
        if compiler is None:
            raise ValueError("grammar: this engine has no tokenizer, so it cannot constrain output to a grammar")
        hook.matcher = compiler.matcher(params.grammar)
    return hook


def apply_hooks(logits: torch.Tensor, hooks: Sequence[LogitsHook | None], compiler: GrammarCompiler | None) -> None:
    """In place on logits (N, V); hooks[i] belongs to row i (None: the row is left alone)."""
    grammar_rows: list[int] = []
    for row, hook in enumerate(hooks):
        if hook is None:
            continue
        if hook.bias_ids is not None:
            logits[row].index_add_(0, hook.bias_ids, hook.bias_values)
        if hook.masked_ids is not None:
            logits[row, hook.masked_ids] = float("-inf")
        if hook.matcher is not None:
            grammar_rows.append(row)
    if grammar_rows:
        assert compiler is not None
        bitmask = compiler.fill_bitmasks([hooks[r].matcher for r in grammar_rows])  # (G, W)
        index = torch.tensor(grammar_rows, dtype=torch.long)
        rows = logits[index]  # (G, V) copy
        apply_token_bitmask(rows, bitmask)
        logits[index] = rows


def advance(hooks: Sequence[LogitsHook | None], tokens: Sequence[int], request_ids: Sequence[str]) -> None:
    """Feed each grammar the token its row sampled."""
    for hook, token, request_id in zip(hooks, tokens, request_ids):
        if hook is not None and hook.matcher is not None and not hook.matcher.consume_token(token):
            log.error("request %s: the grammar refused sampled token %d: %s", request_id, token, hook.matcher.get_error())

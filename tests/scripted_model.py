"""A scripted model for server tests: it replays given token ids through the real engine and server path.

Random weights never write tool-call markup, so tests that need exact output (a tool call, reasoning, a stop
string) run the server on this model instead: a `KimiK2ForCausalLM` whose `forward` returns logits that force
the next token of a script. Everything else — the engine's scheduler, paged KV pool, prefix cache, sampler and
detokenizer, and the whole HTTP layer — is the production code. The engine must use its `reference` runner,
which calls the model's own `forward` with the paged `LatentCache`.

How the model knows where it is: a decode step sees only the new token, so the model keeps the token ids in
the KV cache itself — layer 0's latent row of each token holds its id as three base-256 digits (exact in any
float dtype) — and reads the whole context back from `cache.update`, which returns every key of the row. So
the continuation depends on the full context, prefix caching and preemption included.

Script: find the `trigger` ids (e.g. the chat template's `<|im_assistant|>assistant<|im_middle|>`) in the
context. With k occurrences, the reply is `replies[min(k, len(replies)) - 1]` (turn 1 of a tool round trip
gets the call, turn 2 the answer), and the next token is that reply's token number j, j = tokens after the last
trigger; past the reply's end, or without any trigger, it is `end_id`. `delay_s` sleeps in every forward (a
slow model, for disconnect and concurrency tests). With a cache, only each row's last position gets forced
logits (the engine samples from nothing else); a plain forward without a cache fills every position.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from kimi_k2.config import ModelConfig
from kimi_k2.model.transformer import KimiK2ForCausalLM

_BASE = 256
_DIGITS = 3
FORCED_LOGIT = 30.0
OTHER_LOGIT = -30.0


def scripted_config(vocab_size: int) -> ModelConfig:
    """The smallest valid K2 config with the given vocabulary (one dense layer; the weights are never used)."""
    from kimi_k2.config import preset

    cfg = preset("tiny")
    cfg.vocab_size = vocab_size
    cfg.num_hidden_layers = 1
    return cfg


class ScriptedModel(KimiK2ForCausalLM):
    def __init__(
        self,
        config: ModelConfig,
        trigger: Sequence[int],
        replies: Sequence[Sequence[int]],
        end_id: int,
        delay_s: float = 0.0,
    ) -> None:
        super().__init__(config)
        if config.kv_lora_rank < _DIGITS:
            raise ValueError(f"kv_lora_rank={config.kv_lora_rank}: the scripted model needs at least {_DIGITS} latent channels")
        self.trigger = [int(t) for t in trigger]
        self.replies = [[int(t) for t in r] for r in replies]
        self.end_id = int(end_id)
        self.delay_s = delay_s
        self.forward_calls = 0

    def set_script(self, replies: Sequence[Sequence[int]], delay_s: float | None = None) -> None:
        self.replies = [[int(t) for t in r] for r in replies]
        if delay_s is not None:
            self.delay_s = delay_s

    def next_token(self, context: Sequence[int]) -> int:
        n, k = len(self.trigger), 0
        last_end = -1
        for i in range(len(context) - n + 1):
            if list(context[i : i + n]) == self.trigger:
                k, last_end = k + 1, i + n
        if k == 0 or not self.replies:
            return self.end_id
        reply = self.replies[min(k, len(self.replies)) - 1]
        j = len(context) - last_end
        return reply[j] if j < len(reply) else self.end_id

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: object | None = None,
        stats: object | None = None,
    ) -> torch.Tensor:
        self.forward_calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        rows, length = input_ids.shape  # (B, S)
        if cache is None:
            contexts = input_ids.unsqueeze(1).expand(rows, length, length)  # (B, S, T)
            visible = torch.ones(length, length, dtype=torch.bool).tril().expand(rows, length, length)
        else:
            cfg = self.config
            c_kv = torch.zeros(rows, length, cfg.kv_lora_rank)  # (B, S, C): channel d holds digit d of the id
            for d in range(_DIGITS):
                c_kv[..., d] = (input_ids // _BASE**d) % _BASE
            k_pe = torch.zeros(rows, length, cfg.qk_rope_head_dim)
            keys, _, visible = cache.update(0, c_kv, k_pe)  # type: ignore[attr-defined]  # (B, T, C), mask (B, S, T)
            digits = keys[..., :_DIGITS].float().round().long()
            ids = sum(digits[..., d] * _BASE**d for d in range(_DIGITS))  # (B, T)
            contexts = ids.unsqueeze(1).expand(rows, length, ids.shape[1])
        logits = torch.full((rows, length, self.config.vocab_size), OTHER_LOGIT)
        for b in range(rows):
            valid = [s for s in range(length) if visible[b, s].any()]
            # the engine reads each row's last computed position only; a plain forward gets every position
            for s in valid[-1:] if cache is not None else valid:
                logits[b, s, self.next_token(contexts[b, s][visible[b, s]].tolist())] = FORCED_LOGIT
        return logits.to(self.lm_head.weight.dtype)

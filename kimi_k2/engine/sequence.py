"""One request as the scheduler sees it: token ids, how many of them are in the KV cache, and its blocks.

Pure Python (no torch). A sequence's tokens are `prompt + output`; `num_computed_tokens` of them have their
latents in the paged cache (the block table maps token i to slot `block_table[i // bs] * bs + i % bs`). Every
engine step computes the next `n` uncomputed tokens of each scheduled sequence — a prefill chunk or a single
decode token, the same operation — and samples a new token when that reaches the end of the sequence.
Preemption frees the blocks and sets `num_computed_tokens` back to 0; the tokens stay, so resuming is a
prefill of prompt + output so far (cheap when its blocks are still in the prefix cache).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from kimi_k2.engine.sampling_params import SamplingParams, SamplingParamsError


def check_request(
    prompt_token_ids: Seq[int], params: SamplingParams, *, vocab_size: int, max_model_len: int, has_tokenizer: bool,
    request_id: str = "",
) -> None:
    """Raise ValueError for a request an engine with these limits would refuse. Pure (no torch), so the server
    checks it before a stream starts, in any process; `EngineCore.add_request` runs the same function."""
    where = f"request {request_id!r}: " if request_id else ""
    if not prompt_token_ids:
        raise ValueError(f"{where}the prompt is empty: it needs at least one token")
    bad = next((t for t in prompt_token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ValueError(f"{where}token id {bad} is outside the vocabulary [0, {vocab_size})")
    if len(prompt_token_ids) >= max_model_len:
        raise ValueError(f"{where}prompt has {len(prompt_token_ids)} tokens; the context limit is {max_model_len}")
    for name, ids in (("logit_bias", params.logit_bias), ("masked_token_ids", params.masked_token_ids)):
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise SamplingParamsError(name, f"{where}{name}: token id {bad} is outside the vocabulary [0, {vocab_size})")
    if params.grammar is not None and not has_tokenizer:
        raise SamplingParamsError("grammar", f"{where}a grammar needs a tokenizer; this engine has none")
    if params.stop and not has_tokenizer:
        raise ValueError(f"{where}stop strings need a tokenizer; this engine has none")

_arrival_counter = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # a stop token or stop string
    LENGTH = "length"  # max_tokens or the context limit
    ABORT = "abort"  # aborted by the caller


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    stop_token_ids: frozenset[int] = frozenset()  # resolved: model defaults + params.stop_token_ids
    max_tokens: int = 256  # resolved: params.max_tokens capped by the context limit
    token_ids: list[int] = field(init=False)
    status: SequenceStatus = field(init=False, default=SequenceStatus.WAITING)
    finish_reason: FinishReason | None = field(init=False, default=None)
    block_table: list[int] = field(init=False, default_factory=list)
    block_hashes: list[int] = field(init=False, default_factory=list)  # chain hashes of full, computed blocks
    num_computed_tokens: int = field(init=False, default=0)
    num_cached_tokens: int = field(init=False, default=0)  # prompt tokens served by the prefix cache
    num_preemptions: int = field(init=False, default=0)
    arrival: int = field(init=False)

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError(f"request {self.request_id!r}: the prompt is empty (need at least one token id)")
        self.prompt_token_ids = list(self.prompt_token_ids)
        self.token_ids = list(self.prompt_token_ids)
        self.arrival = next(_arrival_counter)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def check_stop(self) -> FinishReason | None:
        """Token-level stop rules after a token was appended: a stop id (once min_tokens are out), max_tokens."""
        n = self.num_output_tokens
        if n >= self.params.min_tokens and self.token_ids[-1] in self.stop_token_ids:
            return FinishReason.STOP
        if n >= self.max_tokens:
            return FinishReason.LENGTH
        return None

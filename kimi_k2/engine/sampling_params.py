"""SamplingParams: how one request turns logits into tokens, and when it stops.

Pure Python (no torch), so the scheduler and the server can hold it. Semantics follow the OpenAI API as vLLM
implements it: presence/frequency penalties count generated tokens only, the repetition penalty (CTRL paper,
HF semantics) applies to every token seen (prompt and output), `temperature == 0` is greedy, `top_k <= 0` and
`top_p == 1` disable those filters, `min_p` keeps tokens with probability >= min_p × the top probability.
A temperature below `GREEDY_BELOW` (1e-5, vLLM's threshold too) is greedy: dividing logits by 1e-45 would
overflow float32, and such a distribution is argmax anyway.

The logits hook (`logits_hook.py`), applied before everything above, is per request and costs nothing when
unused: `logit_bias` (OpenAI's: token id -> a value in [-100, 100] added to the logit), `masked_token_ids`
(ids that can never be sampled) and `grammar` (an llguidance grammar, Lark syntax with `%json{…}` for JSON
schemas: only tokens that keep the output a prefix of the grammar's language can be sampled; compiled once per
grammar text by the engine, `grammar.py`). All three are plain data, so params still travel between processes.

`temperature=None` means "the model's default": `generation_config.json`'s temperature when the checkpoint has
one, else Kimi K2's recommended 0.6 (SPEC §5); `LLM` resolves it with `with_defaults`. Stop token ids given
here are added to the model's default stops (EOS and `<|im_end|>`), which `ignore_eos` switches off.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

K2_DEFAULT_TEMPERATURE = 0.6
GREEDY_BELOW = 1e-5  # temperatures under this sample greedily
SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed accepts: [-2**63, 2**64)
LOGIT_BIAS_LIMIT = 100.0  # OpenAI's range for logit_bias values


class SamplingParamsError(ValueError):
    """A field out of range; `field` is its name (the server reports it as the request's `param`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(slots=True)
class SamplingParams:
    temperature: float | None = None
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int | None = 256  # None: until a stop or the model's context limit
    min_tokens: int = 0  # stops (ids and strings) are ignored before this many tokens
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # stop strings (need a tokenizer); excluded from the text
    ignore_eos: bool = False  # ignore the model's default stop ids (benchmarks)
    seed: int | None = None  # same seed, same prompt, same model → same output, whatever else is batched
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's logprob plus the top-k alternatives
    skip_special_tokens: bool = True  # in the text (tool-call and think markers are always kept)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    masked_token_ids: list[int] = field(default_factory=list)  # never sampled
    grammar: str | None = None  # llguidance grammar (Lark) the output must follow; None: free

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop_token_ids = [int(i) for i in self.stop_token_ids]
        self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        self.masked_token_ids = [int(i) for i in self.masked_token_ids]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field, its value and the allowed range."""

        def bad(name: str, allowed: str) -> SamplingParamsError:
            return SamplingParamsError(name, f"SamplingParams.{name}={getattr(self, name)!r}: {allowed}")

        if self.temperature is not None and not 0 <= self.temperature < math.inf:
            raise bad("temperature", "must be a finite number >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if self.top_k < 0:
            raise bad("top_k", "must be >= 0 (0 = no top-k filter)")
        if not 0 <= self.min_p <= 1:
            raise bad("min_p", "must be in [0, 1]")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise bad(name, "must be in [-2, 2]")
        if not 0 < self.repetition_penalty < math.inf:
            raise bad("repetition_penalty", "must be a finite number > 0 (1 = off)")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", "must be >= 1 or None")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise bad("min_tokens", f"must be in [0, max_tokens={self.max_tokens}]")
        if any(i < 0 for i in self.stop_token_ids):
            raise bad("stop_token_ids", "token ids must be >= 0")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", "stop strings must be non-empty strings")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
            raise bad("seed", "must be in [-2**63, 2**64) (a 64-bit seed)")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise bad("logprobs", "must be None or in [0, 20]")
        if any(i < 0 for i in self.logit_bias):
            raise bad("logit_bias", "token ids must be >= 0")
        if any(not -LOGIT_BIAS_LIMIT <= v <= LOGIT_BIAS_LIMIT for v in self.logit_bias.values()):
            raise bad("logit_bias", f"values must be in [-{LOGIT_BIAS_LIMIT:g}, {LOGIT_BIAS_LIMIT:g}]")
        if any(i < 0 for i in self.masked_token_ids):
            raise bad("masked_token_ids", "token ids must be >= 0")
        if self.grammar is not None and not (isinstance(self.grammar, str) and self.grammar.strip()):
            raise bad("grammar", "must be None or a non-empty grammar text")

    @property
    def greedy(self) -> bool:
        return self.temperature is not None and self.temperature < GREEDY_BELOW

    @property
    def uses_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    @property
    def uses_logits_hook(self) -> bool:
        """True when the logits hook changes this request's logits (bias, mask or grammar)."""
        return bool(self.logit_bias or self.masked_token_ids or self.grammar is not None)

    def with_defaults(self, temperature: float = K2_DEFAULT_TEMPERATURE) -> SamplingParams:
        """A copy with `temperature=None` replaced by the model's default."""
        if self.temperature is not None:
            return self
        return dataclasses.replace(self, temperature=temperature)

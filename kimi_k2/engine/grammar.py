"""Grammar-constrained decoding through llguidance: grammars compiled once and cached, one matcher per request.

Why llguidance (the measurement is in docs/server.md, `bench/grammar_mask.py`): its masks cost ~10-25 µs per
step for one sequence and ~0.1-0.2 ms for 16 on K2's 163,840-token vocabulary, with no ahead-of-time
compilation of a schema (2 ms, xgrammar's 35-40 ms); its Lark grammars name special tokens directly
(`<[163595]>` is `<|tool_calls_section_begin|>`, which K2's tool-call format needs: the markers are single
special tokens, and free text can never produce one); and it embeds JSON schemas in a grammar (`%json{…}`),
so a tool call's arguments and a reply's JSON are one grammar.

`GrammarCompiler` turns a grammar text into a matcher template (cached by text, LRU) and gives each request its
own copy (`LLMatcher.deep_copy`: the compiled lexer and grammar are shared). The end of the grammar is the
engine's stop tokens (`<|im_end|>`, `[EOS]`): once the grammar is complete, only those can be sampled.
`fill_bitmasks` computes the masks of all constrained rows of a step in one call (llguidance's thread pool from
PARALLEL_FROM rows; fewer in the calling thread, where a hand-off to the pool costs more than it saves).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import llguidance
import llguidance.tiktoken
import torch

from kimi_k2.engine.token_bitmask import allocate_bitmask

DEFAULT_CACHE_SIZE = 256  # compiled grammars kept (a grammar is a few hundred KB at most)
PARALLEL_FROM = 4  # constrained rows from which a step's masks go to llguidance's thread pool


class GrammarError(ValueError):
    """A grammar llguidance refuses (the message starts with `grammar:` and says why)."""


class GrammarCompiler:
    """Compiled grammars for one tokenizer; `matcher(grammar)` is a fresh per-request matcher."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int], cache_size: int = DEFAULT_CACHE_SIZE,
                 threads: int | None = None) -> None:
        eos = sorted(t for t in stop_token_ids if t < vocab_size) or [tokenizer.eos_id]
        self.vocab_size = vocab_size
        self.ll_tokenizer = llguidance.tiktoken.lltokenizer_from_encoding(tokenizer.encoding, n_vocab=vocab_size, eos_token=eos)
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._cache_size = cache_size
        self._executor = llguidance.LLExecutor(threads)
        self.parallel_from = PARALLEL_FROM
        self.compiled = 0  # grammars compiled (not served from the cache)

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        template = self._cache.get(grammar)
        if template is None:
            template = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
            if template.is_error():
                raise GrammarError(f"grammar: {template.get_error()}")
            self.compiled += 1
            self._cache[grammar] = template
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(grammar)
        return template.deep_copy()

    def fill_bitmasks(self, matchers: Sequence[llguidance.LLMatcher]) -> torch.Tensor:
        """The next-token bitmask of each matcher: int32 (N, ceil(V / 32))."""
        bitmask = allocate_bitmask(len(matchers), self.vocab_size)  # contiguous; llguidance writes every word
        row_bytes = bitmask.shape[1] * 4
        if len(matchers) < self.parallel_from:  # in this thread: no hand-off to the pool, no pool thread spinning
            for i, m in enumerate(matchers):
                m.unsafe_compute_mask_ptr(bitmask.data_ptr() + i * row_bytes, row_bytes)
            return bitmask
        # (llguidance.torch's wrapper of this call imports torch._dynamo: seconds of start-up for one line)
        self._executor.unsafe_compute_mask_ptr(
            [(m, i) for i, m in enumerate(matchers)], bitmask.data_ptr(), row_bytes, bitmask.shape[0]
        )
        return bitmask

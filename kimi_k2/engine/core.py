"""EngineCore: requests in, one step at a time, output deltas out. Synchronous; `LLM` and `AsyncLLM` wrap it.

A step = schedule (scheduler.py) → run the packed batch (model_runner.py) → the logits hook of the rows that
have one (logits_hook.py: logit bias, token mask, grammar) → sample the rows that reached their last token
(sampler.py) → apply token-level stops (scheduler) → turn the new tokens into deltas: text through
the tokenizer's incremental detokenizer (when the engine has a tokenizer), stop strings, logprobs and counts.

Stop strings are matched on the decoded text; the text ends before the stop string (OpenAI semantics), and
while a request runs the last `len(longest stop) - 1` characters are held back so that a stop string split
over several tokens never leaks into a stream. Token ids are never held back or cut: `token_ids` always
lists what the model generated, including the token that completed a stop string or a stop id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import torch

from kimi_k2.engine.block_manager import BlockManager
from kimi_k2.engine.lockstep import LockstepRunner, PoolSettings
from kimi_k2.engine.logits_hook import LogitsHook, advance, apply_hooks, make_hook
from kimi_k2.engine.model_runner import ModelRunner, StepChunk
from kimi_k2.engine.paged_cache import PagedLatentPool
from kimi_k2.engine.sampler import SampleRequest, TokenLogprob, sample
from kimi_k2.engine.sampling_params import K2_DEFAULT_TEMPERATURE, SamplingParams
from kimi_k2.engine.scheduler import Scheduler
from kimi_k2.engine.sequence import FinishReason, Sequence, check_request
from kimi_k2.model.transformer import KimiK2ForCausalLM
from kimi_k2.planner.kv import kv_bytes

log = logging.getLogger("kimi_k2")

# Special tokens a text stream keeps even with skip_special_tokens: tool-call parsers and reasoning need them.
KEPT_SPECIAL_TOKENS = (
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
    "<think>",
    "</think>",
)


@dataclass(slots=True)
class RequestOutput:
    """What a request produced since its previous delta (streaming), or in total (`LLM.generate`)."""

    request_id: str
    token_ids: list[int]
    text: str = ""  # "" when the engine has no tokenizer
    logprobs: list[TokenLogprob] | None = None  # one per token in token_ids when the request asked for them
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    num_prompt_tokens: int = 0
    num_completion_tokens: int = 0  # total so far
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache


@dataclass(frozen=True, slots=True)
class EngineStats:
    num_waiting: int
    num_running: int
    kv_block_size: int
    kv_blocks_total: int
    kv_blocks_used: int
    kv_blocks_free: int
    kv_pool_bytes: int
    kv_bytes_per_token: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of which found (not recomputed)
    num_preemptions: int
    num_steps: int
    num_prompt_tokens_computed: int
    num_generated_tokens: int


@dataclass(eq=False)
class _Request:
    seq: Sequence
    generator: torch.Generator | None
    detokenizer: Any = None  # kimi_k2.tokenizer IncrementalDetokenizer
    text: str = ""  # decoded text so far (cut at a stop string)
    emitted_tokens: int = 0
    emitted_chars: int = 0
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    hook: LogitsHook | None = None  # logit bias, token mask, grammar (None: the logits are left alone)


class EngineCore:
    def __init__(
        self,
        model: KimiK2ForCausalLM,
        *,
        tokenizer: Any = None,
        kv_cache_memory: int | None = None,
        num_kv_blocks: int | None = None,
        block_size: int = 16,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 512,
        enable_prefix_caching: bool = True,
        max_model_len: int | None = None,
        default_temperature: float = K2_DEFAULT_TEMPERATURE,
        default_stop_token_ids: Seq[int] = (),
        runner: str = "fast",
        prefill_attention: str = "auto",
        int8_activations: bool = False,
        seed: int = 0,
    ) -> None:
        self.model, self.cfg, self.tokenizer = model, model.config, tokenizer
        # Ids the tokenizer can turn into text. A model may have padded its vocabulary beyond the tokenizer's;
        # those ids are never sampled. A tokenizer larger than the model is an error: its ids could not be fed.
        self.sampleable_vocab = self.cfg.vocab_size
        if tokenizer is not None:
            if tokenizer.vocab_size > self.cfg.vocab_size:
                raise ValueError(
                    f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {self.cfg.vocab_size}"
                )
            self.sampleable_vocab = tokenizer.vocab_size
        dtype = model.compute_dtype
        device = model.lm_head.weight.device
        self.max_model_len = max_model_len or self.cfg.max_position_embeddings
        if num_kv_blocks is not None:
            self.pool = PagedLatentPool(self.cfg, num_kv_blocks, block_size, dtype, device)
        else:
            budget = kv_cache_memory
            if budget is None:  # no more than every sequence slot at full context could ever use
                most = kv_bytes(self.cfg, self.max_model_len + block_size, max_num_seqs, dtype.itemsize)
                budget = min(default_kv_cache_memory(), most)
            self.pool = PagedLatentPool.from_budget(self.cfg, budget, block_size, dtype, device)
        capacity = self.pool.num_blocks * block_size
        if self.max_model_len > capacity:  # one sequence can never hold more than the whole pool
            log.warning(
                "context limit lowered from %d to %d tokens: the KV pool (%d blocks × %d) holds no more; "
                "give a larger kv_cache_memory for longer contexts",
                self.max_model_len, capacity, self.pool.num_blocks, block_size,
            )  # fmt: skip
            self.max_model_len = capacity
        self.block_manager = BlockManager(self.pool.num_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens)
        self.runner: ModelRunner | LockstepRunner = ModelRunner(
            model, self.pool, mode=runner, prefill_attention=prefill_attention, int8_activations=int8_activations
        )
        if self.runner.comm is not None:  # a sharded model: the other ranks run every step with this one
            settings = PoolSettings(self.pool.num_blocks, block_size, dtype, prefill_attention, int8_activations)
            self.runner = LockstepRunner(self.runner, settings)
        self.default_temperature = default_temperature
        self.default_stop_token_ids = frozenset(default_stop_token_ids)
        self._rng = torch.Generator().manual_seed(seed)
        self._grammar_compiler: Any = None  # built on the first grammar request (GrammarCompiler)
        self._requests: dict[str, _Request] = {}
        self._steps = self._prompt_tokens = self._generated = 0
        log.info(
            "KV pool: %d blocks × %d tokens (%.1f MiB, %d B/token)",
            self.pool.num_blocks, block_size, self.pool.nbytes / 2**20, self.pool.bytes_per_token,
        )

    # ------------------------------------------------------------------ requests
    def check_request(self, prompt_token_ids: Seq[int], params: SamplingParams, request_id: str = "") -> None:
        """Raise ValueError for a request `add_request` would refuse (`sequence.check_request` with this
        engine's limits)."""
        check_request(prompt_token_ids, params, vocab_size=self.cfg.vocab_size, max_model_len=self.max_model_len,
                      has_tokenizer=self.tokenizer is not None, request_id=request_id)

    def add_request(self, request_id: str, prompt_token_ids: Seq[int], params: SamplingParams | None = None) -> None:
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already running")
        params = (params or SamplingParams()).with_defaults(self.default_temperature)
        prompt = [int(t) for t in prompt_token_ids]
        self.check_request(prompt, params, request_id)
        room = self.max_model_len - len(prompt)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        stops = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.default_stop_token_ids)
        seq = Sequence(request_id, prompt, params, stop_token_ids=stops, max_tokens=max_tokens)
        generator = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else int(torch.randint(2**62, (1,), generator=self._rng))
            generator = torch.Generator().manual_seed(seed)
        detokenizer = None
        if self.tokenizer is not None:
            detokenizer = self.tokenizer.detokenizer(
                skip_special_tokens=params.skip_special_tokens, keep=KEPT_SPECIAL_TOKENS
            )
        hook = make_hook(params, self.grammar_compiler() if params.grammar is not None else None)
        self.scheduler.add(seq)
        self._requests[request_id] = _Request(seq, generator, detokenizer, hook=hook)

    def grammar_compiler(self) -> Any:
        """The engine's `GrammarCompiler` (compiled grammars are cached there); made on first use."""
        if self._grammar_compiler is None:
            if self.tokenizer is None:
                raise ValueError("grammar: this engine has no tokenizer, so it cannot constrain output to a grammar")
            from kimi_k2.engine.grammar import GrammarCompiler  # lazy: llguidance loads only when a grammar is used

            stops = sorted(self.default_stop_token_ids) or [self.tokenizer.eos_id]
            self._grammar_compiler = GrammarCompiler(self.tokenizer, self.cfg.vocab_size, stops)
        return self._grammar_compiler

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its KV blocks; returns its final delta, or None if unknown/finished."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return None
        self.scheduler.abort(request_id)
        return self._delta(request, finished=True)

    def close(self) -> None:
        """Release the other ranks of a sharded model (they leave their step loop); nothing for a whole model."""
        if isinstance(self.runner, LockstepRunner):
            self.runner.stop()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    # ------------------------------------------------------------------ one step
    def step(self) -> list[RequestOutput]:
        out = self.scheduler.schedule()
        if not out.chunks:
            return []
        chunks = [
            StepChunk(c.seq.token_ids[c.start : c.start + c.num_tokens], c.start, c.seq.block_table, c.samples)
            for c in out.chunks
        ]
        # Sampling runs on the CPU (rows × V floats), where the per-request generators live, whatever the device.
        logits = self.runner.execute(chunks).float().cpu()
        if self.sampleable_vocab < logits.shape[-1]:
            logits = logits.clone()  # an inference-mode tensor: write into a normal copy (rows × V, small)
            logits[:, self.sampleable_vocab :] = float("-inf")
        sampled_idx = [i for i, c in enumerate(out.chunks) if c.samples]
        rows = []
        hooks = [self._requests[out.chunks[i].seq.request_id].hook for i in sampled_idx]
        raw_logits = None  # the model's own logits when a hook changed them (reported logprobs are raw)
        if any(h is not None for h in hooks):
            raw_logits, logits = logits, logits.clone()
            apply_hooks(logits, hooks, self._grammar_compiler)
        for i in sampled_idx:
            seq = out.chunks[i].seq
            request = self._requests[seq.request_id]
            penalties = seq.params.uses_penalties
            rows.append(
                SampleRequest(
                    seq.params,
                    request.generator,
                    seq.prompt_token_ids if penalties else (),
                    seq.output_token_ids if penalties else (),
                )
            )
        tokens, logprobs = sample(logits, rows, raw_logits) if rows else ([], [])
        if raw_logits is not None:
            advance(hooks, tokens, [out.chunks[i].seq.request_id for i in sampled_idx])
        self._steps += 1
        self._prompt_tokens += sum(c.num_tokens for c in out.chunks if c.seq.num_output_tokens == 0)
        self._generated += len(tokens)
        self.scheduler.update(out, dict(zip(sampled_idx, tokens)))
        deltas = []
        for i, token, logprob in zip(sampled_idx, tokens, logprobs):
            seq = out.chunks[i].seq
            request = self._requests[seq.request_id]
            if logprob is not None:
                request.logprobs.append(logprob)
            deltas.append(self._process(request, token))
        return deltas

    def _process(self, request: _Request, token: int) -> RequestOutput:
        seq = request.seq
        stopped_by_id = seq.finish_reason is FinishReason.STOP
        if stopped_by_id:
            request.stop_reason = token
        if request.detokenizer is not None:
            if not stopped_by_id:
                request.text += request.detokenizer.feed(token)
            if seq.is_finished:
                request.text += request.detokenizer.finish()
            stops = seq.params.stop
            if stops and not stopped_by_id and seq.num_output_tokens >= seq.params.min_tokens:
                # anything before emitted_chars was checked already (the tail a stop could start in is held back)
                hits = [(at, s) for s in stops if (at := request.text.find(s, request.emitted_chars)) >= 0]
                if hits:
                    at, stop = min(hits)
                    request.text = request.text[:at]
                    request.stop_reason = stop
                    if seq.is_finished:  # the same token also hit max_tokens: the stop string wins
                        seq.finish_reason = FinishReason.STOP
                    else:
                        self.scheduler.finish(seq, FinishReason.STOP)
        finished = seq.is_finished
        if finished:
            self._requests.pop(seq.request_id, None)
        return self._delta(request, finished)

    def _delta(self, request: _Request, finished: bool) -> RequestOutput:
        seq = request.seq
        new_ids = seq.output_token_ids[request.emitted_tokens :]
        hold = 0 if finished or not seq.params.stop else max(len(s) for s in seq.params.stop) - 1
        end = max(request.emitted_chars, len(request.text) - hold)
        text = request.text[request.emitted_chars : end]
        logprobs = None
        if seq.params.logprobs is not None:
            logprobs = request.logprobs[request.emitted_tokens :]
        request.emitted_tokens += len(new_ids)
        request.emitted_chars = end
        return RequestOutput(
            request_id=seq.request_id,
            token_ids=new_ids,
            text=text,
            logprobs=logprobs,
            finished=finished,
            finish_reason=seq.finish_reason.value if finished and seq.finish_reason else None,
            stop_reason=request.stop_reason if finished else None,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_completion_tokens=seq.num_output_tokens,
            num_cached_tokens=seq.num_cached_tokens,
        )

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def prompt_logprobs(self, prompt_token_ids: Seq[int], top: int = 0, rows_per_chunk: int = 256) -> list[TokenLogprob]:
        """Teacher-forced logprobs of prompt tokens 1..n-1 (token i given tokens 0..i-1) and their `top`
        alternatives: what OpenAI's `echo` + `logprobs` reports and what lm-evaluation-harness sums as a
        log-likelihood. Raw distribution over the sampleable vocabulary, exactly like sampled-token logprobs.

        One full forward of the model's reference path, outside the KV pool (no blocks taken, no prefix-cache
        entries made); the LM head runs `rows_per_chunk` positions at a time so the [n, V] logits never exist at
        once. Called between steps (AsyncLLM runs it on the engine thread)."""
        if isinstance(self.runner, LockstepRunner):
            raise ValueError("prompt logprobs (echo with logprobs) run the model's single-process forward: not "
                             "available on a model sharded over several ranks")
        ids = [int(t) for t in prompt_token_ids]
        vocab = self.cfg.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt_logprobs: token id {bad[0]} is outside the vocabulary [0, {vocab})")
        if len(ids) > self.max_model_len:
            raise ValueError(f"prompt_logprobs: prompt has {len(ids)} tokens; the context limit is {self.max_model_len}")
        if not 0 <= top <= 20:
            raise ValueError(f"prompt_logprobs: top={top} must be in [0, 20]")
        if len(ids) < 2:
            return []
        device = self.model.lm_head.weight.device
        hidden = self.model.hidden_states(torch.tensor([ids], device=device))[0, :-1]  # (n-1, D)
        targets = torch.tensor(ids[1:])
        out: list[TokenLogprob] = []
        for start in range(0, hidden.shape[0], rows_per_chunk):
            logits = self.model.lm_head(hidden[start : start + rows_per_chunk]).float().cpu()  # (r, V)
            if self.sampleable_vocab < logits.shape[-1]:
                logits[:, self.sampleable_vocab :] = float("-inf")
            logp = logits.log_softmax(-1)
            chosen = logp.gather(1, targets[start : start + rows_per_chunk, None])[:, 0].tolist()
            values, alt = logp.topk(top, dim=-1) if top else (logp[:, :0], logp[:, :0].long())
            for r, target in enumerate(targets[start : start + rows_per_chunk].tolist()):
                out.append(TokenLogprob(target, chosen[r], tuple(zip(alt[r].tolist(), values[r].tolist()))))
        return out

    # ------------------------------------------------------------------ introspection
    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_waiting=len(self.scheduler.waiting),
            num_running=len(self.scheduler.running),
            kv_block_size=bm.block_size,
            kv_blocks_total=bm.num_blocks,
            kv_blocks_used=bm.num_used_blocks,
            kv_blocks_free=bm.num_free_blocks,
            kv_pool_bytes=self.pool.nbytes,
            kv_bytes_per_token=self.pool.bytes_per_token,
            prefix_cache_queries=bm.prefix_cache_queries,
            prefix_cache_hits=bm.prefix_cache_hits,
            num_preemptions=self.scheduler.num_preemptions,
            num_steps=self._steps,
            num_prompt_tokens_computed=self._prompt_tokens,
            num_generated_tokens=self._generated,
        )


def default_kv_cache_memory() -> int:
    """Upper bound of the KV budget when none is given: a fifth of the memory available now, at most 4 GiB,
    at least 64 MiB (the engine also caps it at what max_num_seqs full-context sequences could use)."""
    available = 4 * 2**30
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return max(64 * 2**20, min(4 * 2**30, available // 5))

"""`LLM`: the offline facade — load a checkpoint (or take a model), then `generate`, `stream` or `chat`.

Prompts are token id lists, or strings when the checkpoint directory has a tokenizer (`tiktoken.model`;
special-token markup in a string is encoded as the special tokens, as HF does). Defaults come from the
checkpoint: stop ids = config `eos_token_id` + `generation_config.json`'s `eos_token_id` + the tokenizer's
`<|im_end|>` and `[EOS]`; temperature = `generation_config.json`'s, else K2's recommended 0.6. The other sampling
defaults of `generation_config.json` (top_p, top_k, min_p, repetition_penalty) are `sampling_defaults`, and
`default_sampling_params()` uses them all.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import torch

from kimi_k2.engine.core import EngineCore, EngineStats, RequestOutput
from kimi_k2.engine.lockstep import LoadOptions, Ranks, load_rank0, start_ranks
from kimi_k2.engine.sampling_params import K2_DEFAULT_TEMPERATURE, SamplingParams
from kimi_k2.hub import resolve_checkpoint
from kimi_k2.jsonfile import read_json_object
from kimi_k2.model.transformer import KimiK2ForCausalLM
from kimi_k2.parallel.collectives import RankFailure
from kimi_k2.parallel.config import ParallelConfig
from kimi_k2.parallel.launch import DEFAULT_TIMEOUT_S

log = logging.getLogger("kimi_k2")

Prompt = str | Seq[int]


def read_generation_config(directory: str | Path) -> dict[str, Any]:
    """`generation_config.json` of a checkpoint directory, or {} when there is none."""
    return read_json_object(Path(directory) / "generation_config.json", missing_ok=True)


SAMPLING_DEFAULT_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def sampling_defaults(generation_config: Mapping[str, Any], source: str = "generation_config.json") -> dict[str, float]:
    """The sampling fields a generation config sets, checked by `SamplingParams` (an error names the file)."""
    values = {k: generation_config[k] for k in SAMPLING_DEFAULT_FIELDS if generation_config.get(k) is not None}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{source}: {key}={value!r} is not a number")
    try:
        SamplingParams(**values)
    except ValueError as exc:
        raise ValueError(f"{source}: {str(exc).removeprefix('SamplingParams.')}") from None
    return {k: (int(v) if k == "top_k" else float(v)) for k, v in values.items()}


def load_tokenizer(directory: str | Path) -> Any | None:
    """The checkpoint's `kimi_k2.Tokenizer`, or None when the directory has no `tiktoken.model`."""
    if not (Path(directory) / "tiktoken.model").is_file():
        return None
    from kimi_k2.tokenizer.tokenizer import Tokenizer  # lazy: the engine itself works on ids

    return Tokenizer.from_pretrained(directory)


def _as_ids(value: Any) -> list[int]:
    return [int(v) for v in (value if isinstance(value, list) else [value])] if value is not None else []


class LLM:
    """Batch and streaming generation on one model with a paged latent KV cache and continuous batching.

    `model`: a checkpoint directory (HF layout), a Hub id cached locally (`kimi_k2.hub`) or a
    `KimiK2ForCausalLM`. `weights`: what a checkpoint's linear layers become (`load_model`'s choice): "auto"
    (default) keeps FP8 and INT4 checkpoints in their stored format, run by the kernels that read it;
    "dequantize" converts them to `dtype` on load; "fp8" / "int4" quantize. `int8_activations=True` (an engine
    keyword) runs INT4 weights against activations quantized to int8 per 32 inputs, llama.cpp's Q4_0 × Q8_0
    arithmetic: faster, not exact (docs/engine.md has the measured error). `mmap` (default True): tensors used
    as stored are views into the memory-mapped checkpoint files (zero copy; a start takes seconds and the page
    cache holds the experts); False reads them into RAM. `tokenizer`: a tokenizer object, a directory to load one
    from, or None (then the checkpoint directory's tokenizer, if any). The KV pool gets
    `kv_cache_memory` bytes (default: a fifth of available memory, at most 4 GiB) or exactly `num_kv_blocks`.
    The other keywords are `EngineCore`'s.

    `tensor_parallel_size=N` shards the checkpoint over N ranks (`kimi_k2.parallel`): attention heads, dense MLPs,
    the vocabulary and (without `enable_expert_parallel`) every routed expert are split N ways; with
    `enable_expert_parallel=True` each rank holds E/N whole routed experts, combined by one all-reduce per MoE
    layer (`moe_combine="allreduce"`) or dispatched by all-to-all (`"alltoall"`). This process is rank 0 and
    starts ranks 1..N-1 on this host, or, under torchrun, joins the ranks it started (docs/parallel.md).
    `device`: "cpu" or "cuda" (each rank its own GPU); `distributed_backend` defaults to gloo on CPU and NCCL on
    CUDA; a collective that waits longer than `distributed_timeout_s` on a silent rank fails. Call `close()` (or
    use `with LLM(...)`) to stop the workers.
    """

    def __init__(
        self,
        model: str | Path | KimiK2ForCausalLM,
        *,
        tokenizer: Any = None,
        dtype: torch.dtype = torch.float32,
        weights: str = "auto",
        mmap: bool = True,
        num_threads: int | None = None,
        tensor_parallel_size: int = 1,
        enable_expert_parallel: bool = False,
        moe_combine: str = "allreduce",
        device: str = "cpu",
        distributed_backend: str | None = None,
        distributed_timeout_s: float = DEFAULT_TIMEOUT_S,
        **engine_kwargs: Any,
    ) -> None:
        layout = ParallelConfig(tensor_parallel_size, 0, enable_expert_parallel, moe_combine)
        if layout.is_parallel and num_threads is None:  # the ranks of this host share its cores
            num_threads = max(1, (os.cpu_count() or 1) // layout.world_size)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self._ranks: Ranks | None = None
        generation_config: dict[str, Any] = {}
        if isinstance(model, KimiK2ForCausalLM):
            if layout.is_parallel:
                raise ValueError("tensor_parallel_size > 1 loads each rank's shard from a checkpoint: pass its path")
            self.model = model.eval()
            source: Path | None = None
        else:
            source = resolve_checkpoint(model, "checkpoint")  # a directory, or a Hub id in the local HF cache
            from kimi_k2.checkpoint.loader import load_model

            if layout.is_parallel:
                from kimi_k2.config import ModelConfig

                layout.check(ModelConfig.from_pretrained(source))  # before any process starts
                options = LoadOptions(str(source), dtype, weights, mmap, device)
                self._ranks = start_ranks(layout, options, threads=torch.get_num_threads(),
                                          backend=distributed_backend, timeout_s=distributed_timeout_s)
                self.model = load_rank0(self._ranks, options)
            else:
                self.model = load_model(source, dtype=dtype, device=device, weights=weights, mmap=mmap)
            generation_config = read_generation_config(source)
        if isinstance(tokenizer, (str, Path)):
            tokenizer_dir = tokenizer
            tokenizer = load_tokenizer(tokenizer_dir)
            if tokenizer is None:
                raise FileNotFoundError(f"no tiktoken.model in tokenizer directory {tokenizer_dir}")
        elif tokenizer is None and source is not None:
            tokenizer = load_tokenizer(source)
        self.tokenizer = tokenizer
        self.config = self.model.config
        stops = set(self.config.stop_token_ids) | set(_as_ids(generation_config.get("eos_token_id")))
        if tokenizer is not None:
            stops |= set(tokenizer.stop_token_ids)
        self.default_stop_token_ids = sorted(stops)
        where = f"{source / 'generation_config.json'}" if source is not None else "generation_config.json"
        self.sampling_defaults = sampling_defaults(generation_config, where)
        self.default_temperature = self.sampling_defaults.get("temperature", K2_DEFAULT_TEMPERATURE)
        try:
            self.engine = EngineCore(
                self.model,
                tokenizer=tokenizer,
                default_temperature=self.default_temperature,
                default_stop_token_ids=self.default_stop_token_ids,
                **engine_kwargs,
            )
        except RankFailure as exc:
            raise self.rank_failure(exc) from exc
        except BaseException:
            if self._ranks is not None:
                self._ranks.stop()
            raise
        self._ids = itertools.count()

    # ------------------------------------------------------------------ the ranks of a sharded model
    def rank_failure(self, exc: RankFailure) -> RankFailure:
        """A rank failed: stop what is left of the group; the error says which workers exited."""
        if self._ranks is None:
            return exc
        failure = self._ranks.failure(exc)
        self._ranks.stop()
        self._ranks = None
        return failure

    def _step(self) -> list[RequestOutput]:
        try:
            return self.engine.step()
        except RankFailure as exc:
            raise self.rank_failure(exc) from exc

    def close(self) -> None:
        """Stop the worker ranks of a sharded model (nothing to do for a whole one). Idempotent."""
        if self._ranks is not None:
            try:
                self.engine.close()
            finally:
                self._ranks.stop()
                self._ranks = None

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ prompts
    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (a string needs a tokenizer)."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer (tiktoken.model in the checkpoint); pass token ids")
            return self.tokenizer.encode(prompt, allow_special=True)
        return [int(t) for t in prompt]

    def encode_chat(self, messages: Seq[Mapping[str, Any]], tools: Seq[Mapping[str, Any]] | None = None) -> list[int]:
        """A conversation rendered with the checkpoint's chat template, ready for the assistant's turn."""
        if self.tokenizer is None:
            raise ValueError("chat needs a tokenizer (tiktoken.model in the checkpoint)")
        return list(self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True))

    def default_sampling_params(self) -> SamplingParams:
        return SamplingParams(**{**self.sampling_defaults, "temperature": self.default_temperature})

    @staticmethod
    def _batch(prompts: Prompt | Seq[Prompt]) -> tuple[list[Prompt], bool]:
        if isinstance(prompts, str) or (isinstance(prompts, Seq) and prompts and isinstance(prompts[0], int)):
            return [prompts], True  # type: ignore[list-item]
        return list(prompts), False  # type: ignore[arg-type]

    def _add(self, prompts: list[Prompt], params: SamplingParams | Seq[SamplingParams] | None) -> list[str]:
        if isinstance(params, Seq):
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
            per_prompt = list(params)
        else:
            per_prompt = [params or self.default_sampling_params()] * len(prompts)
        encoded = [self.encode(p) for p in prompts]  # encode all first: a bad prompt adds nothing
        ids = []
        for prompt_ids, p in zip(encoded, per_prompt):
            request_id = str(next(self._ids))
            self.engine.add_request(request_id, prompt_ids, p)
            ids.append(request_id)
        return ids

    # ------------------------------------------------------------------ generation
    def generate(
        self, prompts: Prompt | Seq[Prompt], params: SamplingParams | Seq[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Complete every prompt; one `RequestOutput` (all tokens, whole text) per prompt, in order."""
        batch, _ = self._batch(prompts)
        request_ids = self._add(batch, params)
        totals = {rid: RequestOutput(rid, []) for rid in request_ids}
        from tqdm import tqdm

        with tqdm(total=len(request_ids), desc="generate", disable=not sys.stderr.isatty(), leave=False) as bar:
            try:
                while any(not t.finished for t in totals.values()):
                    for delta in self._step():
                        if delta.request_id in totals:
                            _accumulate(totals[delta.request_id], delta)
                            bar.update(int(delta.finished))
            finally:
                for rid, total in totals.items():
                    if not total.finished:
                        self.engine.abort(rid)
        return [totals[rid] for rid in request_ids]

    def stream(
        self, prompts: Prompt | Seq[Prompt], params: SamplingParams | Seq[SamplingParams] | None = None
    ) -> Iterator[RequestOutput]:
        """Deltas as they are produced (new tokens, new text); with several prompts, interleaved by request_id
        (ids are assigned in prompt order). Closing the iterator aborts what is still running."""
        batch, _ = self._batch(prompts)
        request_ids = self._add(batch, params)
        pending = set(request_ids)
        try:
            while pending:
                for delta in self._step():
                    if delta.request_id in pending:
                        if delta.finished:
                            pending.discard(delta.request_id)
                        yield delta
        finally:
            for rid in pending:
                self.engine.abort(rid)

    def chat(
        self,
        messages: Seq[Mapping[str, Any]],
        params: SamplingParams | None = None,
        tools: Seq[Mapping[str, Any]] | None = None,
    ) -> RequestOutput:
        return self.generate([self.encode_chat(messages, tools)], params)[0]

    def stats(self) -> EngineStats:
        return self.engine.stats()


def _accumulate(total: RequestOutput, delta: RequestOutput) -> None:
    total.token_ids.extend(delta.token_ids)
    total.text += delta.text
    if delta.logprobs is not None:
        total.logprobs = (total.logprobs or []) + delta.logprobs
    total.finished, total.finish_reason, total.stop_reason = delta.finished, delta.finish_reason, delta.stop_reason
    total.num_prompt_tokens = delta.num_prompt_tokens
    total.num_completion_tokens = delta.num_completion_tokens
    total.num_cached_tokens = delta.num_cached_tokens

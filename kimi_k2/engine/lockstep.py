"""A sharded engine in lockstep: one scheduler (rank 0), every rank running every step.

Rank 0's `EngineCore` schedules and samples as it does for one process; its runner is a `LockstepRunner`, which
first broadcasts the step's chunks (token ids, positions, block tables, which rows are sampled) and then runs
the step, while ranks 1..N-1 sit in `serve_steps`: receive a step, run it, repeat, until the stop message. The
KV pool of every rank has the same blocks (rank 0 announces its size), so rank 0's block tables are valid
everywhere; MLA's latent is one per token, so every rank caches the whole latent of every sequence.

A rank that dies or hangs makes the next collective raise `RankFailure` on the others: the engine raises, the
server exits non-zero, workers whose rank 0 is gone exit. `start_ranks` starts the group for `LLM`:
spawned workers on one host, or the ranks torchrun started.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from kimi_k2.engine.model_runner import ModelRunner, StepChunk
from kimi_k2.engine.paged_cache import PagedLatentPool
from kimi_k2.parallel.collectives import Collectives, RankFailure
from kimi_k2.parallel.config import ParallelConfig
from kimi_k2.parallel.launch import (
    DEFAULT_TIMEOUT_S,
    Workers,
    default_backend,
    init_group,
    rank_device,
    torchrun_rank,
)
from kimi_k2.ports import free_port

log = logging.getLogger("kimi_k2")


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """What rank 0 tells the workers once, before the first step: the pool's shape and the runner's options."""

    num_blocks: int
    block_size: int
    dtype: torch.dtype
    prefill_attention: str
    int8_activations: bool


class LockstepRunner:
    """Rank 0's runner of a sharded model: each step is broadcast, then run by every rank together."""

    def __init__(self, runner: ModelRunner, settings: PoolSettings) -> None:
        assert runner.comm is not None
        self.runner, self.comm = runner, runner.comm
        self.comm.broadcast_object(settings)
        self.stopped = False

    def execute(self, chunks: Sequence[StepChunk]) -> torch.Tensor:
        if self.stopped:
            raise RankFailure("the sharded engine was stopped")
        self.comm.broadcast_object([(list(c.token_ids), c.start, list(c.block_table), c.wants_logits) for c in chunks])
        return self.runner.execute(chunks)

    def stop(self) -> None:
        """Tell the workers to leave their step loop (once; a failed group is not waited on)."""
        if not self.stopped:
            self.stopped = True
            try:
                self.comm.broadcast_object(None)
            except RankFailure as exc:  # a group that already failed has nobody left to tell
                log.warning("stopping the ranks: %s", exc)


def serve_steps(model: Any, comm: Collectives) -> int:
    """A worker's life after loading: build the pool rank 0 announces, then run steps until told to stop.
    Returns the number of steps run."""
    settings: PoolSettings = comm.broadcast_object()
    device = model.lm_head.weight.device
    pool = PagedLatentPool(model.config, settings.num_blocks, settings.block_size, settings.dtype, device)
    runner = ModelRunner(model, pool, prefill_attention=settings.prefill_attention,
                         int8_activations=settings.int8_activations)
    steps = 0
    while (message := comm.broadcast_object()) is not None:
        runner.execute([StepChunk(ids, start, table, wants) for ids, start, table, wants in message])
        steps += 1
    return steps


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """How every rank loads its shard (`load_model`'s arguments)."""

    path: str
    dtype: torch.dtype
    weights: str
    mmap: bool
    device: str


def _load(options: LoadOptions, pc: ParallelConfig, local_rank: int) -> Any:
    from kimi_k2.checkpoint.loader import load_model

    device = rank_device(options.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return load_model(options.path, dtype=options.dtype, device=device, weights=options.weights, mmap=options.mmap,
                      parallel=pc)


def run_worker(rank: int, local_rank: int, layout: ParallelConfig, options: LoadOptions) -> None:
    """Ranks 1..N-1: load this rank's shard, wait for rank 0, run steps. The process group must exist."""
    pc = layout.at_rank(rank)
    model = _load(options, pc, local_rank)
    comm = Collectives(pc, model.lm_head.weight.device)
    try:
        dist.barrier()  # every rank has loaded
        serve_steps(model, comm)
    except RankFailure as exc:
        log.error("rank %d: %s", rank, exc)
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()


def _spawned_worker(rank: int, init_method: str, backend: str, timeout_s: float, layout: ParallelConfig,
                    options: LoadOptions, threads: int) -> None:
    """The body of a worker process started by `start_ranks` on one host."""
    logging.basicConfig(level=logging.WARNING, format=f"rank {rank}: %(levelname)s %(message)s")
    torch.set_num_threads(threads)
    init_group(rank, layout.world_size, init_method=init_method, backend=backend, timeout_s=timeout_s)
    run_worker(rank, rank, layout, options)


@dataclass
class Ranks:
    """Rank 0's view of the group it started (`workers` is None under torchrun)."""

    layout: ParallelConfig
    workers: Workers | None

    def failure(self, exc: BaseException) -> RankFailure:
        """A RankFailure that says which workers exited, if any did."""
        failed = self.workers.failed(wait_s=2.0) if self.workers is not None else []
        detail = f" ({'; '.join(failed)})" if failed else ""
        return RankFailure(f"{exc}{detail}")

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        if dist.is_initialized():
            dist.destroy_process_group()


def start_ranks(layout: ParallelConfig, options: LoadOptions, *, threads: int, backend: str | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> Ranks:
    """Make this process rank 0 of `layout.world_size` ranks: under torchrun, join the group it set up; else spawn
    ranks 1..N-1 on this host, each with `threads` torch threads."""
    backend = backend or default_backend(options.device)
    launched = torchrun_rank()
    if launched is not None:
        rank, world_size, _ = launched
        if world_size != layout.world_size:
            raise ValueError(f"torchrun started {world_size} ranks but tensor_parallel_size={layout.world_size}")
        if rank != 0:
            raise RuntimeError(f"rank {rank} runs `run_worker`, not an engine (only rank 0 schedules)")
        init_group(0, world_size, init_method="env://", backend=backend, timeout_s=timeout_s)
        return Ranks(layout, None)
    init_method = f"tcp://127.0.0.1:{free_port()}"
    workers = Workers(_spawned_worker, layout.world_size, (init_method, backend, timeout_s, layout, options, threads))
    workers.join_group(layout.world_size, init_method=init_method, backend=backend, timeout_s=timeout_s)
    return Ranks(layout, workers)


def load_rank0(ranks: Ranks, options: LoadOptions) -> Any:
    """Rank 0's shard, once every rank has loaded (a worker that failed to load is reported here)."""
    try:
        model = _load(options, ranks.layout.at_rank(0), 0)
        dist.barrier()
    except (RankFailure, RuntimeError) as exc:
        ranks.stop()
        raise ranks.failure(exc) from exc
    return model

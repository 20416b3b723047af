"""The processes of a sharded model: the process group, workers started on one host, torchrun's environment.

One host: `start_workers` spawns ranks 1..N-1 (`multiprocessing`'s spawn) and the calling process becomes rank 0;
they meet over TCP on 127.0.0.1 (`init_process_group`), and rank 0 watches its workers while it waits, so a
worker that dies before joining is an error at once, not a timeout. Several hosts: `torchrun --nnodes 2
--nproc-per-node 8 ... kimi-k2 serve --tensor-parallel-size 16` starts every rank itself and sets RANK,
WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT (`torchrun_rank`); rank 0 serves, the others run steps.

Backend: gloo for CPU tensors, NCCL for CUDA ones (`default_backend`), overridable.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from kimi_k2.parallel.collectives import RankFailure

DEFAULT_TIMEOUT_S = 600.0  # a collective that waits longer than this on a silent rank fails (RankFailure)


def default_backend(device: str | torch.device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device: str | torch.device, local_rank: int) -> torch.device:
    """The device of a rank on its host: `cuda` means the rank's own GPU (cuda:LOCAL_RANK)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device


def torchrun_rank() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when this process was started by torchrun (or another launcher that sets
    RANK and WORLD_SIZE), else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def init_group(rank: int, world_size: int, *, init_method: str, backend: str, timeout_s: float) -> None:
    """Join the default process group (a no-op if this process already has one of that size)."""
    if dist.is_initialized():
        if dist.get_world_size() != world_size:
            raise ValueError(f"this process is already in a process group of {dist.get_world_size()} ranks, "
                             f"not tensor_parallel_size={world_size}")
        return
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


class Workers:
    """Ranks 1..N-1 of one host, each a spawned process running `target(rank, *args)`."""

    def __init__(self, target: Callable[..., None], world_size: int, args: tuple[Any, ...]) -> None:
        context = mp.get_context("spawn")
        self.processes = [
            context.Process(target=target, args=(rank, *args), name=f"kimi-k2-rank{rank}", daemon=True)
            for rank in range(1, world_size)
        ]
        for process in self.processes:
            process.start()

    def failed(self, wait_s: float = 0.0) -> list[str]:
        """'rank R exited with code C' for every worker that has exited (within `wait_s`: a collective can fail a
        moment before the dead rank's exit is visible)."""
        deadline = time.monotonic() + wait_s
        while wait_s and time.monotonic() < deadline and all(p.exitcode is None for p in self.processes):
            time.sleep(0.05)
        return [f"rank {p.name.removeprefix('kimi-k2-rank')} exited with code {p.exitcode}"
                for p in self.processes if p.exitcode is not None]

    def join_group(self, world_size: int, *, init_method: str, backend: str, timeout_s: float) -> None:
        """Join the group as rank 0 while watching the workers: one that exits first is an error now."""
        error: list[BaseException] = []

        def join() -> None:
            try:
                init_group(0, world_size, init_method=init_method, backend=backend, timeout_s=timeout_s)
            except BaseException as exc:  # noqa: BLE001 - reported to the waiting thread
                error.append(exc)

        thread = threading.Thread(target=join, name="kimi-k2-join", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
            if thread.is_alive() and self.failed():
                self.stop()
                raise RankFailure("a worker exited before joining the process group: " + "; ".join(self.failed()))
        if error:
            self.stop()
            raise RankFailure(f"rank 0 could not join the process group: {error[0]}") from error[0]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Wait for the workers to exit (they do after the engine's stop message), then end the ones that did not."""
        for process in self.processes:
            process.join(timeout_s)
            if process.is_alive():
                process.terminate()
                process.join(timeout_s)

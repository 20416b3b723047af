"""The collectives a sharded step calls, on torch.distributed (gloo on CPU, NCCL on CUDA), with counters.

Reductions run in float32 whatever the compute dtype, so a bf16 model does not drift with the rank count.
`Collectives.stats` counts calls and bytes sent per kind (what `bench/parallel.py` reports next to the
planner's formula). A failed collective (a rank that died or hung past the group's timeout) raises
`RankFailure`, never hangs.
"""

from __future__ import annotations

import pickle
from collections import Counter
from typing import Any

import torch
import torch.distributed as dist

from kimi_k2.parallel.config import ParallelConfig


class RankFailure(RuntimeError):
    """A collective failed: another rank exited, crashed or stopped answering."""


class Collectives:
    def __init__(self, pc: ParallelConfig, device: torch.device | str = "cpu") -> None:
        self.pc = pc
        self.device = torch.device(device)  # where this backend's tensors live (CUDA for NCCL)
        self.calls: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    @property
    def world_size(self) -> int:
        return self.pc.world_size

    def reset_stats(self) -> None:
        self.calls.clear()
        self.bytes.clear()

    def _count(self, kind: str, nbytes: int) -> None:
        self.calls[kind] += 1
        self.bytes[kind] += nbytes

    def _run(self, kind: str, op: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return op(*args, group=self.pc.group, **kwargs)
        except RuntimeError as exc:  # gloo: "Connection closed by peer", timeouts; NCCL: watchdog errors
            raise RankFailure(f"rank {self.pc.rank}: {kind} across {self.world_size} ranks failed: {exc}") from exc

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a float32 tensor over the ranks, in place."""
        assert t.dtype == torch.float32, "reductions run in float32"
        self._count("all_reduce", t.numel() * 4)
        self._run("all_reduce", dist.all_reduce, t)
        return t

    def gather_columns(self, t: torch.Tensor) -> torch.Tensor | None:
        """Every rank's [n, c] side by side on rank 0 ([n, N·c]); None on the other ranks (vocab-split logits)."""
        t = t.contiguous()
        self._count("gather", t.numel() * t.element_size())
        parts = [torch.empty_like(t) for _ in range(self.world_size)] if self.pc.rank == 0 else None
        self._run("gather", dist.gather, t, parts, dst=self._global(0))
        return torch.cat(parts, dim=-1) if parts is not None else None

    def all_to_all(self, t: torch.Tensor, send_rows: list[int], recv_rows: list[int]) -> torch.Tensor:
        """Rows of `t` to each rank (send_rows[r] to rank r, in rank order); returns the rows received."""
        out = t.new_empty((sum(recv_rows), *t.shape[1:]))
        self._count("all_to_all", t.numel() * t.element_size())
        self._run("all_to_all", dist.all_to_all_single, out, t.contiguous(), recv_rows, send_rows)
        return out

    def all_gather_ints(self, values: list[int]) -> list[list[int]]:
        """Every rank's list of ints (all the same length)."""
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        self._count("all_gather", t.numel() * 8)
        self._run("all_gather", dist.all_gather, parts, t)
        return [p.tolist() for p in parts]

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's `obj` on every rank (the step's metadata): a length, then the pickled bytes."""
        if self.pc.rank == 0:
            data = bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
            payload = torch.frombuffer(data, dtype=torch.uint8).to(self.device)
            size = torch.tensor([payload.numel()], dtype=torch.int64, device=self.device)
        else:
            size = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._count("broadcast", 8)
        self._run("broadcast", dist.broadcast, size, src=self._global(0))
        if self.pc.rank != 0:
            payload = torch.empty(int(size), dtype=torch.uint8, device=self.device)
        self._count("broadcast", int(size))
        self._run("broadcast", dist.broadcast, payload, src=self._global(0))
        return obj if self.pc.rank == 0 else pickle.loads(payload.cpu().numpy().tobytes())

    def _global(self, rank: int) -> int:
        """A rank of this group as torch.distributed's global rank."""
        return rank if self.pc.group is None else dist.get_global_rank(self.pc.group, rank)

"""`ParallelConfig`: how one model is split over N ranks, passed explicitly to the loader and the runner.

Every rank runs the same layer loop on the same tokens (tensor parallelism of attention and the dense MLPs,
Megatron's column/row scheme); routed experts are either tensor-split like the dense MLPs (`expert_parallel=
False`: every rank holds a 1/N slice of every expert) or whole on one rank each (`expert_parallel=True`: rank r
holds experts [r·E/N, (r+1)·E/N)). With expert parallelism the routed outputs are combined by one all-reduce
per MoE layer that also carries the shared expert's partial sum (`moe_combine="allreduce"`, DeepSeek's scheme),
or dispatched to and returned from the experts' owners by two all-to-alls (`moe_combine="alltoall"`).

Rank and world size are fields of this object, never module globals; `group` is the torch.distributed process
group (None: the default group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kimi_k2.config import ModelConfig

MOE_COMBINE = ("allreduce", "alltoall")


@dataclass(frozen=True)
class ParallelConfig:
    world_size: int = 1
    rank: int = 0
    expert_parallel: bool = False
    moe_combine: str = "allreduce"
    group: Any = None  # torch.distributed.ProcessGroup, None for the default group

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"tensor_parallel_size={self.world_size}: must be at least 1")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside [0, {self.world_size})")
        if self.moe_combine not in MOE_COMBINE:
            raise ValueError(f"moe_combine={self.moe_combine!r}: choose one of {', '.join(MOE_COMBINE)}")
        if self.moe_combine == "alltoall" and not self.expert_parallel:
            raise ValueError("moe_combine='alltoall' dispatches tokens to the experts' ranks: it needs expert_parallel")

    @property
    def is_parallel(self) -> bool:
        return self.world_size > 1

    def at_rank(self, rank: int, group: Any = None) -> ParallelConfig:
        """The same layout seen from `rank`."""
        return ParallelConfig(self.world_size, rank, self.expert_parallel, self.moe_combine, group)

    # ---------------------------------------------------------------- the split
    def check(self, cfg: ModelConfig) -> None:
        """Raise ValueError naming the config field that `world_size` does not divide."""
        n = self.world_size
        if n == 1:
            return
        need = [("num_attention_heads", cfg.num_attention_heads)]
        if cfg.first_k_dense_replace > 0 or cfg.n_routed_experts == 0:
            need.append(("intermediate_size", cfg.intermediate_size))
        if cfg.n_routed_experts:
            need.append(("moe_intermediate_size × n_shared_experts", cfg.moe_intermediate_size * cfg.n_shared_experts))
            if self.expert_parallel:
                need.append(("n_routed_experts", cfg.n_routed_experts))
            else:
                need.append(("moe_intermediate_size", cfg.moe_intermediate_size))
        for field, value in need:
            if value % n:
                raise ValueError(
                    f"tensor_parallel_size={n} does not divide the model's {field}={value}"
                    + (" (try --enable-expert-parallel)" if field == "moe_intermediate_size" else "")
                )

    def part(self, total: int) -> tuple[int, int]:
        """This rank's [start, stop) of `total` items split evenly (`check` has made sure N divides it)."""
        size = total // self.world_size
        return self.rank * size, (self.rank + 1) * size

    def vocab_rows(self, vocab_size: int) -> int:
        """Rows of the embedding and lm_head per rank: ceil(V / N) (the last rank's shard may be shorter)."""
        return -(-vocab_size // self.world_size)

    def vocab_part(self, vocab_size: int) -> tuple[int, int]:
        """This rank's [start, stop) of the vocabulary."""
        rows = self.vocab_rows(vocab_size)
        return min(vocab_size, self.rank * rows), min(vocab_size, (self.rank + 1) * rows)

    def experts(self, cfg: ModelConfig) -> range:
        """The routed experts this rank holds whole (all of them, sliced, without expert parallelism)."""
        if not self.expert_parallel:
            return range(cfg.n_routed_experts)
        return range(*self.part(cfg.n_routed_experts))

    def expert_owner(self, cfg: ModelConfig, expert: int) -> int:
        return expert // (cfg.n_routed_experts // self.world_size) if self.expert_parallel else self.rank


SINGLE = ParallelConfig()

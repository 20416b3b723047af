"""Tensor and expert parallelism on torch.distributed: the layout (`ParallelConfig`, `layout`), the modules'
shards (`shard`), the collectives the runner calls (`collectives`) and the processes (`launch`)."""

from kimi_k2.parallel.config import SINGLE, ParallelConfig

__all__ = ["SINGLE", "ParallelConfig"]

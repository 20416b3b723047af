"""Continuous batching with chunked prefill and preemption by recompute. Pure Python (no torch).

Every step has a token budget (`max_num_batched_tokens`). Running sequences are served first, oldest first:
a decoding sequence takes 1 token, a sequence still prefilling takes the next chunk of its prompt (at most the
budget left). When the pool cannot give a running sequence its next block, the newest running sequence is
preempted — its blocks are freed and it goes back to the front of the waiting queue, to be re-prefilled
later (its blocks usually are still in the prefix cache). Then waiting sequences join while the budget, the
sequence limit and the pool allow: a new request starts prefilling in the very step it is admitted, next to
the running decodes. A waiting sequence is admitted only when all its current tokens fit, so an admitted
prefill never has to grow mid-prompt.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from kimi_k2.engine.block_manager import BlockManager
from kimi_k2.engine.sequence import FinishReason, Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledChunk:
    """Compute tokens [start, start + num_tokens) of `seq` this step."""

    seq: Sequence
    start: int
    num_tokens: int
    samples: bool = False  # the chunk reaches the sequence's last token: this step yields its next token

    @classmethod
    def next_of(cls, seq: Sequence, num_tokens: int) -> ScheduledChunk:
        start = seq.num_computed_tokens
        return cls(seq, start, num_tokens, start + num_tokens == seq.num_tokens)


@dataclass(slots=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int = 64, max_num_batched_tokens: int = 512) -> None:
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs={max_num_seqs} must be >= 1")
        if max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens={max_num_batched_tokens} must be >= 1")
        self.block_manager = block_manager
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # sorted by arrival: the oldest is served first, the newest preempted
        self.num_preemptions = 0

    # ------------------------------------------------------------------ requests
    def add(self, seq: Sequence) -> None:
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        worst = seq.num_prompt_tokens + seq.max_tokens
        if worst > capacity:
            raise ValueError(
                f"request {seq.request_id!r} needs up to {worst} tokens of KV cache "
                f"({seq.num_prompt_tokens} prompt + max_tokens {seq.max_tokens}) but the pool holds {capacity} "
                f"({self.block_manager.num_blocks} blocks × {self.block_manager.block_size}); lower max_tokens or "
                f"give the KV cache more memory"
            )
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def abort(self, request_id: str) -> Sequence | None:
        """Finish a request at once and free its blocks; None if it is not (or no longer) here."""
        for seq in self.running:
            if seq.request_id == request_id:
                self.running.remove(seq)
                self._finish(seq, FinishReason.ABORT)
                return seq
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                self._finish(seq, FinishReason.ABORT)
                return seq
        return None

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------------ one step
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:  # preempted earlier in this loop
                continue
            n = min(seq.num_uncomputed_tokens, budget)
            while not self.block_manager.grow(seq, seq.num_computed_tokens + n):
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                out.chunks.append(ScheduledChunk.next_of(seq, n))
                budget -= n
        if out.preempted:  # the pool is full: admitting anything now would only preempt it again
            return out
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.block_manager.can_allocate(seq):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=lambda s: s.arrival)
            n = min(seq.num_uncomputed_tokens, budget)
            out.chunks.append(ScheduledChunk.next_of(seq, n))
            budget -= n
        return out

    def update(self, out: SchedulerOutput, sampled: dict[int, int]) -> list[Sequence]:
        """Record a finished step. `sampled` maps a chunk's index in `out.chunks` to its new token (every chunk
        with `samples`). Returns the sequences that finished on a token-level stop rule."""
        finished: list[Sequence] = []
        for index, chunk in enumerate(out.chunks):
            seq = chunk.seq
            if seq.status is not SequenceStatus.RUNNING:  # aborted while the step ran
                continue
            seq.num_computed_tokens = chunk.start + chunk.num_tokens
            self.block_manager.commit(seq)
            if not chunk.samples:
                continue
            seq.append_token(sampled[index])
            reason = seq.check_stop()
            if reason is not None:
                self.running.remove(seq)
                self._finish(seq, reason)
                finished.append(seq)
        return finished

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Finish a running or waiting sequence for a reason decided outside (e.g. a stop string)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._finish(seq, reason)

    # ------------------------------------------------------------------ internals
    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

"""Sequence, block manager and scheduler logic without a model (pure Python, milliseconds).

A fake "model step" marks the scheduled tokens computed and appends a made-up token for every chunk that
reaches the end of its sequence, which is all the scheduler can observe of a real step.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from kimi_k2.engine.block_manager import BlockManager
from kimi_k2.engine.sampling_params import SamplingParams
from kimi_k2.engine.scheduler import Scheduler
from kimi_k2.engine.sequence import FinishReason, Sequence, SequenceStatus


def make_seq(rid: str, prompt: list[int], max_tokens: int = 8, stops: frozenset[int] = frozenset()) -> Sequence:
    return Sequence(rid, prompt, SamplingParams(max_tokens=max_tokens), stop_token_ids=stops, max_tokens=max_tokens)


def fake_step(scheduler: Scheduler, token: int = 7):
    out = scheduler.schedule()
    sampled = {i: token for i, c in enumerate(out.chunks) if c.samples}
    finished = scheduler.update(out, sampled)
    return out, finished


def check_invariants(bm: BlockManager, seqs: list[Sequence]) -> None:
    """Reference counts equal the number of live block tables holding a block; free list = ref_count 0."""
    counts = [0] * bm.num_blocks
    for seq in seqs:
        if seq.status is SequenceStatus.RUNNING:
            for b in seq.block_table:
                counts[b] += 1
            assert len(seq.block_table) * bm.block_size >= seq.num_computed_tokens
        else:
            assert seq.block_table == []
    assert [b.ref_count for b in bm.blocks] == counts
    assert bm.num_free_blocks == sum(c == 0 for c in counts)


def test_engine_logic_modules_do_not_import_torch():
    code = (
        "import sys; import kimi_k2.engine.scheduler, kimi_k2.engine.block_manager, kimi_k2.engine.sequence, "
        "kimi_k2.engine.sampling_params; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sampling_params_validation_names_the_field():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=100)
    assert SamplingParams().with_defaults(0.6).temperature == 0.6
    assert SamplingParams(temperature=0).with_defaults(0.6).temperature == 0
    assert SamplingParams(stop="x").stop == ["x"]


def test_sequence_stop_rules():
    seq = make_seq("a", [1, 2], max_tokens=3, stops=frozenset({9}))
    seq.append_token(4)
    assert seq.check_stop() is None
    seq.append_token(9)
    assert seq.check_stop() is FinishReason.STOP
    seq = make_seq("b", [1], max_tokens=2)
    seq.append_token(4)
    seq.append_token(5)
    assert seq.check_stop() is FinishReason.LENGTH
    with pytest.raises(ValueError, match="empty"):
        make_seq("c", [])


def test_prefix_cache_shares_full_blocks_and_recomputes_last_token():
    bm = BlockManager(num_blocks=16, block_size=4)
    first = make_seq("a", list(range(10)))  # blocks [0-3] [4-7] [8,9]
    bm.allocate(first)
    assert first.num_computed_tokens == 0 and len(first.block_table) == 3
    first.num_computed_tokens = 10
    bm.commit(first)
    assert len(first.block_hashes) == 2  # only full blocks are cached

    second = make_seq("b", list(range(8)) + [50, 51, 52])
    bm.allocate(second)
    assert second.block_table[:2] == first.block_table[:2]
    assert second.num_computed_tokens == 8 and second.num_cached_tokens == 8
    assert bm.blocks[first.block_table[0]].ref_count == 2

    exact = make_seq("c", list(range(8)))  # fully cached prompt: its last block is recomputed
    bm.allocate(exact)
    assert exact.num_computed_tokens == 4
    assert exact.block_table[0] == first.block_table[0] and exact.block_table[1] != first.block_table[1]

    other = make_seq("d", [99] + list(range(1, 8)))  # first block differs → the chain breaks at once
    bm.allocate(other)
    assert other.num_computed_tokens == 0
    assert bm.prefix_cache_hits == 12


def test_freed_blocks_stay_cached_until_reused():
    bm = BlockManager(num_blocks=4, block_size=2)
    seq = make_seq("a", [1, 2, 3, 4, 5])
    bm.allocate(seq)
    seq.num_computed_tokens = 5
    bm.commit(seq)
    bm.free(seq)
    assert bm.num_free_blocks == 4
    again = make_seq("b", [1, 2, 3, 4, 6])
    assert bm.can_allocate(again)
    bm.allocate(again)
    assert again.num_computed_tokens == 4  # revived from the free list
    bm.free(again)
    # fill the pool with unrelated tokens: the cached blocks get reused and forgotten
    filler = make_seq("c", [8] * 8)
    bm.allocate(filler)
    bm.free(filler)
    third = make_seq("d", [1, 2, 3, 4, 6])
    bm.allocate(third)
    assert third.num_computed_tokens == 0


def test_hash_collision_is_not_a_hit():
    bm = BlockManager(num_blocks=4, block_size=2)
    seq = make_seq("a", [1, 2, 3])
    bm.allocate(seq)
    seq.num_computed_tokens = 3
    bm.commit(seq)
    block = bm.blocks[seq.block_table[0]]
    block.token_ids = (1, 99)  # as if a different block had the same hash
    other = make_seq("b", [1, 2, 5])
    bm.allocate(other)
    assert other.num_computed_tokens == 0


def test_chunked_prefill_respects_token_budget_and_decodes_go_first():
    bm = BlockManager(num_blocks=64, block_size=4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=10)
    short = make_seq("short", [1, 2, 3], max_tokens=20)
    sched.add(short)
    out, _ = fake_step(sched)
    assert [(c.seq.request_id, c.num_tokens, c.samples) for c in out.chunks] == [("short", 3, True)]
    long = make_seq("long", list(range(100, 125)), max_tokens=5)
    sched.add(long)
    out, _ = fake_step(sched)
    # the running decode takes 1 token, the new prompt gets the remaining 9 of the budget
    assert [(c.seq.request_id, c.num_tokens) for c in out.chunks] == [("short", 1), ("long", 9)]
    assert not out.chunks[1].samples
    out, _ = fake_step(sched)
    assert [(c.seq.request_id, c.start, c.num_tokens) for c in out.chunks] == [("short", 4, 1), ("long", 9, 9)]
    out, _ = fake_step(sched)
    assert [(c.seq.request_id, c.start, c.num_tokens, c.samples) for c in out.chunks] == [
        ("short", 5, 1, True),
        ("long", 18, 7, True),
    ]
    assert long.num_output_tokens == 1
    check_invariants(bm, [short, long])


def test_max_num_seqs_limits_running():
    bm = BlockManager(num_blocks=64, block_size=4)
    sched = Scheduler(bm, max_num_seqs=2, max_num_batched_tokens=100)
    seqs = [make_seq(str(i), [i + 1, 2], max_tokens=3) for i in range(3)]
    for s in seqs:
        sched.add(s)
    out, _ = fake_step(sched)
    assert len(out.chunks) == 2 and len(sched.waiting) == 1
    while sched.has_unfinished():
        fake_step(sched)
    assert all(s.finish_reason is FinishReason.LENGTH and s.num_output_tokens == 3 for s in seqs)
    assert bm.num_free_blocks == 64


def test_preemption_when_pool_is_full_then_resume():
    bm = BlockManager(num_blocks=6, block_size=2, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    a = make_seq("a", [1, 2, 3], max_tokens=6)  # computes up to 8 tokens = 4 blocks; so does b: 8 > 6
    b = make_seq("b", [4, 5, 6], max_tokens=6)
    sched.add(a)
    sched.add(b)
    preempted = []
    steps = 0
    while sched.has_unfinished():
        out, _ = fake_step(sched)
        preempted += [s.request_id for s in out.preempted]
        check_invariants(bm, [a, b])
        steps += 1
        assert steps < 50
    assert "b" in preempted  # the newest sequence is preempted, the oldest keeps running
    assert a.num_preemptions == 0 and b.num_preemptions >= 1
    assert a.num_output_tokens == 6 and b.num_output_tokens == 6
    assert bm.num_free_blocks == 6 and sched.num_preemptions == len(preempted)


def test_abort_frees_blocks_at_once():
    bm = BlockManager(num_blocks=8, block_size=4)
    sched = Scheduler(bm)
    seq = make_seq("x", list(range(1, 10)), max_tokens=4)
    sched.add(seq)
    fake_step(sched)
    assert bm.num_used_blocks == 3
    assert sched.abort("x") is seq
    assert bm.num_used_blocks == 0 and seq.finish_reason is FinishReason.ABORT
    assert sched.abort("x") is None
    waiting = make_seq("y", [1, 2], max_tokens=1)
    sched.add(waiting)
    assert sched.abort("y") is waiting and not sched.has_unfinished()


def test_request_larger_than_pool_is_rejected_with_the_numbers():
    sched = Scheduler(BlockManager(num_blocks=2, block_size=4))
    with pytest.raises(ValueError, match=r"needs up to 12 tokens.*pool holds 8"):
        sched.add(make_seq("big", list(range(4)), max_tokens=8))

"""Block manager and scheduler: plain-Python bookkeeping, tested without torch.

The "model" here is a pure function of (request, position) standing in for the
runner, so the scheduler's accounting can be checked over thousands of random
histories in seconds. The real model runs in tests/test_engine.py.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_triton.block_manager import BlockManager, OutOfBlocksError
from qwen_triton.outputs import SampledToken
from qwen_triton.sampling_params import SamplingParams
from qwen_triton.scheduler import Scheduler
from qwen_triton.sequence import Sequence, SequenceStatus


def token_for(request_id: str, index: int) -> int:
    return (hash((request_id, index)) & 0xFFFF) % 97 + 3


def run_step(sched: Scheduler) -> list:
    out = sched.schedule()
    sampled = {s.request_id: SampledToken(token_for(s.request_id, len(s.output_token_ids)))
               for s in out.scheduled if s.samples}
    return sched.update(out, sampled), out


def check_accounting(sched: Scheduler) -> None:
    bm = sched.blocks
    tables = [seq.block_table for seq in sched.requests.values()]
    used = [b for t in tables for b in t]
    assert len(used) == len(set(used)), "a block is owned twice"
    assert bm.num_free_blocks + len(used) == bm.num_blocks
    for seq in sched.running:
        assert seq.status is SequenceStatus.RUNNING
        assert len(seq.block_table) == bm.blocks_for(seq.num_computed_tokens)
    for seq in sched.waiting:
        assert seq.status is SequenceStatus.WAITING
        assert seq.block_table == [] and seq.num_computed_tokens == 0
    assert set(sched.requests) == {s.request_id for s in sched.running} | {s.request_id for s in sched.waiting}


def make_seq(rid: str, prompt_len: int, max_tokens: int, arrival: int = 0, **kw) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, **kw)
    return Sequence(rid, list(range(1, prompt_len + 1)), params, seed=0, arrival=arrival)


def test_block_manager_allocate_free():
    bm = BlockManager(4, 16)
    a = bm.allocate(3)
    assert bm.num_free_blocks == 1 and bm.blocks_for(33) == 3 and len(set(a)) == 3
    bm.free(a[:1])
    assert bm.num_free_blocks == 2
    with pytest.raises(ValueError, match="freed more often"):
        bm.free(a[:1])
    bm.free(a[1:])
    assert bm.num_free_blocks == 4
    with pytest.raises(OutOfBlocksError):
        bm.allocate(5)
    with pytest.raises(ValueError):
        bm.free([0])


def test_grow_changes_nothing_when_short():
    bm = BlockManager(2, 4)
    table: list[int] = []
    assert bm.grow(table, 8) and len(table) == 2
    assert not bm.grow(table, 9) and len(table) == 2


def test_decodes_join_running_batch_and_prefill_is_chunked():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10, max_model_len=128)
    sched.add(make_seq("a", 25, 4))
    _, out = run_step(sched)
    assert [(s.request_id, s.num_tokens, s.samples) for s in out.scheduled] == [("a", 10, False)]
    sched.add(make_seq("b", 3, 4, arrival=1))
    _, out = run_step(sched)  # a's second chunk uses the whole budget: b waits
    assert [(s.request_id, s.num_tokens, s.samples) for s in out.scheduled] == [("a", 10, False)]
    _, out = run_step(sched)  # a's last chunk samples; b joins the same step
    assert [(s.request_id, s.num_tokens, s.samples) for s in out.scheduled] == [("a", 5, True), ("b", 3, True)]
    _, out = run_step(sched)  # both decode together
    assert [(s.request_id, s.num_tokens, s.start_pos) for s in out.scheduled] == [("a", 1, 25), ("b", 1, 3)]
    check_accounting(sched)


def test_budget_and_seat_limits_hold_and_everyone_finishes():
    sched = Scheduler(BlockManager(200, 4), max_num_seqs=3, max_num_batched_tokens=16, max_model_len=256)
    for i in range(10):
        sched.add(make_seq(f"r{i}", 5 + 3 * i, 6, arrival=i))
    produced: dict[str, list[int]] = {}
    while sched.has_unfinished:
        outs, out = run_step(sched)
        assert out.num_batched_tokens <= 16 and len(out.scheduled) <= 3
        for o in outs:
            produced.setdefault(o.request_id, []).extend(o.new_token_ids)
        check_accounting(sched)
    assert all(len(v) == 6 for v in produced.values()) and len(produced) == 10
    assert sched.blocks.num_free_blocks == 200


def test_preemption_recomputes_and_keeps_outputs():
    # 6 blocks of 4 tokens: two 10-token sequences that grow to 20 cannot both fit.
    sched = Scheduler(BlockManager(6, 4), max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64)
    sched.add(make_seq("old", 10, 10, arrival=0))
    sched.add(make_seq("new", 10, 10, arrival=1))
    produced: dict[str, list[int]] = {"old": [], "new": []}
    while sched.has_unfinished:
        outs, _ = run_step(sched)
        for o in outs:
            produced[o.request_id].extend(o.new_token_ids)
        check_accounting(sched)
    assert sched.num_preemptions >= 1
    for rid, toks in produced.items():
        assert toks == [token_for(rid, i) for i in range(10)]


def test_abort_frees_blocks_at_once():
    sched = Scheduler(BlockManager(16, 4), max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64)
    sched.add(make_seq("a", 9, 20))
    run_step(sched)
    assert sched.blocks.num_free_blocks < 16
    out = sched.abort("a")
    assert out.finished and out.finish_reason == "abort"
    assert sched.blocks.num_free_blocks == 16 and not sched.has_unfinished
    assert sched.abort("a") is None


def test_stop_sequences_end_ids_and_min_tokens():
    seq = make_seq("s", 2, 10, stop_token_ids=[[7, 8]], end_ids=[2], min_tokens=2)
    assert seq.append_token(2, None, 100) is None  # end id ignored before min_tokens
    assert seq.append_token(7, None, 100) is None
    assert seq.append_token(8, None, 100) == "stop"  # stop sequence kept in output
    assert seq.output_token_ids == [2, 7, 8]
    seq2 = make_seq("t", 2, 10, end_ids=[2])
    assert seq2.append_token(2, None, 100) == "stop" and seq2.output_token_ids == []


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 30), st.integers(1, 12)),
    st.tuples(st.just("step"), st.integers(1, 4), st.just(0)),
    st.tuples(st.just("abort"), st.integers(0, 40), st.just(0)),
), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=ops, num_blocks=st.integers(12, 40), block_size=st.sampled_from([1, 2, 4, 8]),
       budget=st.integers(4, 48), seats=st.integers(1, 6))
def test_block_accounting_exact_under_random_histories(ops, num_blocks, block_size, budget, seats):
    max_len = 42
    sched = Scheduler(BlockManager(num_blocks, block_size), seats, budget, max_len)
    added: list[str] = []
    finished: set[str] = set()
    for i, (op, a, b) in enumerate(ops):
        if op == "add" and BlockManager(num_blocks, block_size).blocks_for(a + b) <= num_blocks:
            rid = f"r{i}"
            sched.add(make_seq(rid, a, b, arrival=i))
            added.append(rid)
        elif op == "step":
            for _ in range(a):
                outs, _ = run_step(sched)
                finished |= {o.request_id for o in outs if o.finished}
        elif op == "abort" and added:
            rid = added[a % len(added)]
            out = sched.abort(rid)
            assert (out is None) == (rid in finished)
            finished.add(rid)
        check_accounting(sched)
    for _ in range(10_000):  # drain: everything admitted must finish
        if not sched.has_unfinished:
            break
        run_step(sched)
        check_accounting(sched)
    assert not sched.has_unfinished
    assert sched.blocks.num_free_blocks == num_blocks


def test_scheduling_modules_are_torch_free():
    code = ("import sys, qwen_triton.scheduler, qwen_triton.block_manager, qwen_triton.sequence; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)

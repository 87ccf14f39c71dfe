"""Automatic prefix caching: block keys, the block manager's reference counts and LRU eviction, the
scheduler's block accounting under sharing, preemption and abort (property-based, against a simulated KV
pool that checks every reused block holds the tokens it stands for), and the engine on the CPU in float32:
greedy tokens identical with caching on and off, hit counts, a multi-turn chat and the original Qwen's
dynamic NTK (no sharing across different RoPE bases)."""
from __future__ import annotations

import random

import pytest
from checkpoints import VOCAB, convert_qwen2_to_qwen, write_qwen2, write_qwen2_mha
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_triton import EngineConfig, LLMEngine, SamplingParams
from qwen_triton.block_manager import BlockManager, OutOfBlocksError, chain_keys
from qwen_triton.outputs import SampledToken
from qwen_triton.scheduler import Scheduler
from qwen_triton.sequence import Sequence

EOS = 2


# -- keys and the block manager ------------------------------------------------------------------------


def test_keys_chain_over_full_blocks_and_salt():
    a = chain_keys(None, [5, 6, 7, 8, 9, 10, 11], 3)
    assert len(a) == 2  # the partial third block has no key
    assert chain_keys(None, [5, 6, 7, 8, 9, 10], 3) == a
    assert chain_keys(a[0], [8, 9, 10], 3) == a[1:]  # keys extend from a parent
    assert chain_keys(None, [4, 6, 7, 8, 9, 10], 3)[1] != a[1]  # a change before a block changes its key
    assert chain_keys(None, [5, 6, 7, 8, 9, 10], 3, salt=3) != a
    assert chain_keys(None, [1, 2], 3) == []


def test_block_manager_shares_by_reference_and_evicts_least_recent_first():
    bm = BlockManager(4, 2, caching=True)
    keys = chain_keys(None, list(range(8)), 2)
    first = bm.allocate(2)
    for b, k in zip(first, keys):
        bm.register(b, k)
    assert bm.match(keys) == first  # the first two keys are held, the rest are not
    bm.take(first[:1])
    assert bm.ref_count(first[0]) == 2
    bm.free(first[::-1])
    assert bm.num_free_blocks == 3 and bm.num_cached_blocks == 1  # first[1] is free and findable
    assert bm.match(keys) == first  # first[0] still in use by the taker, first[1] cached
    bm.free(first[:1])
    assert bm.num_cached_blocks == 2
    bm.check()
    # never-registered blocks go first, then the cached ones, least recently freed first
    fresh = bm.allocate(2)
    assert set(fresh).isdisjoint(first) and bm.num_cached_blocks == 2
    assert bm.allocate(1) == [first[1]] and bm.match(keys) == [first[0]]
    assert bm.num_evicted == 1
    with pytest.raises(OutOfBlocksError):
        bm.allocate(2)
    with pytest.raises(ValueError, match="freed more often"):
        bm.free([first[0]])
    bm.check()


def test_a_key_keeps_its_first_block_and_caching_off_matches_nothing():
    bm = BlockManager(4, 2, caching=True)
    key = chain_keys(None, [3, 4], 2)[0]
    a, b = bm.allocate(2)
    bm.register(a, key)
    bm.register(b, key)  # an equal prompt computed side by side
    bm.free([a, b])
    assert bm.num_cached_blocks == 1 and bm.match([key]) == [a]
    off = BlockManager(4, 2)
    (c,) = off.allocate(1)
    off.register(c, key)
    assert off.match([key]) == [] and off.num_cached_blocks == 0
    off.free([c])
    off.check()


# -- the scheduler under sharing, preemption and abort (property-based) ------------------------------------


class KVPool:
    """What the runner would write: the token at each (block, offset). Checks, before each chunk is
    written, that the blocks the sequence did not compute itself hold its tokens, and that no block
    another sequence also holds is written."""

    def __init__(self, bm: BlockManager):
        self.bm, self.content = bm, {}

    def run(self, sched: Scheduler, out, prev: dict[str, SampledToken]) -> dict[str, SampledToken]:
        """Write a scheduled step's tokens (a pending input: the token `prev`, the step before, samples)."""
        size = self.bm.block_size
        for s in out.scheduled:
            seq = sched.requests[s.request_id]
            known = s.start_pos + s.num_tokens - s.num_pending_inputs
            tokens = seq.token_slice(0, known)
            if s.num_pending_inputs:
                tokens.append(prev[s.request_id].token_id)
            assert s.token_ids[:s.num_tokens - s.num_pending_inputs] == tokens[s.start_pos:known]
            for pos in range(s.start_pos):
                block = s.block_table[pos // size]
                assert self.content.get((block, pos % size)) == tokens[pos], f"{s.request_id}: stale KV at {pos}"
            for pos in range(s.start_pos, s.start_pos + s.num_tokens):
                block = s.block_table[pos // size]
                assert self.bm.ref_count(block) == 1, f"{s.request_id} writes shared block {block}"
                self.content[(block, pos % size)] = tokens[pos]
        return {s.request_id: SampledToken(random.Random(s.start_pos).randrange(EOS, 40), None)
                for s in out.scheduled if s.samples}


class Driver:
    """Steps a scheduler as the engine does, with one step of lookahead or none."""

    def __init__(self, sched: Scheduler, pool: KVPool, lookahead: bool):
        self.sched, self.pool, self.lookahead = sched, pool, lookahead
        self.inflight = None  # (SchedulerOutput, its sampled tokens)

    def _launch(self, prev: dict) -> tuple | None:
        out = self.sched.schedule()
        check_accounting(self.sched)
        return None if out.is_empty else (out, self.pool.run(self.sched, out, prev))

    def step(self) -> bool:
        current, self.inflight = self.inflight or self._launch({}), None
        if current is None:
            return False
        if self.lookahead:
            self.inflight = self._launch(current[1])
        self.sched.update(*current)
        check_accounting(self.sched)
        return True


def check_accounting(sched: Scheduler) -> None:
    bm = sched.blocks
    bm.check()
    holders: dict[int, int] = {}
    for seq in sched.running:
        assert len(seq.block_table) >= bm.blocks_for(seq.num_computed_tokens)
        for b in seq.block_table:
            holders[b] = holders.get(b, 0) + 1
    for seq in sched.waiting:
        assert seq.block_table == [] and seq.num_computed_tokens == 0
    for b in range(bm.num_blocks):
        assert bm.ref_count(b) == holders.get(b, 0), f"block {b}"


PREFIXES = [[7, 8, 9, 10, 11, 12, 13], [7, 8, 9, 10, 20, 21], [30, 31, 32, 33, 34, 35, 36, 37, 38]]
ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 2), st.lists(st.integers(3, 40), max_size=6), st.integers(1, 8)),
    st.tuples(st.just("abort"), st.integers(0, 30)),
    st.tuples(st.just("step"), st.integers(1, 4))), min_size=1, max_size=40)


@settings(derandomize=True, deadline=None, max_examples=150)
@given(ops, st.integers(6, 14), st.integers(2, 12), st.booleans())
def test_block_accounting_with_sharing_preemption_and_abort(script, num_blocks, budget, lookahead):
    """With and without async scheduling's lookahead (the next step scheduled before this one's tokens are
    in: aborts and end ids land while a step is in flight)."""
    bm = BlockManager(num_blocks, 2, caching=True)
    sched = Scheduler(bm, max_num_seqs=3, max_num_batched_tokens=budget, max_model_len=24)
    driver, added = Driver(sched, KVPool(bm), lookahead), 0
    for op in script + [("step", 60)]:
        if op[0] == "add" and bm.blocks_for(len(PREFIXES[op[1]]) + len(op[2]) + op[3]) <= num_blocks:
            prompt = PREFIXES[op[1]] + op[2]
            params = SamplingParams(max_tokens=op[3], temperature=0.0, end_ids=(EOS,))
            sched.add(Sequence(f"r{added}", prompt, params, 0, added))
            added += 1
        elif op[0] == "abort":
            sched.abort(f"r{op[1]}")
        elif op[0] == "step":
            for _ in range(op[1]):
                if not driver.step():
                    break
    assert not sched.has_unfinished  # everything ran to its end
    assert bm.num_free_blocks == num_blocks
    assert sched.prefix_cache_hits <= sched.prefix_cache_queries


# -- the engine on the CPU ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix-ckpts")
    mha = write_qwen2_mha(str(root / "qwen2-mha"), seed=4)
    return {"qwen2": write_qwen2(str(root / "qwen2"), seed=2),
            "qwen-long": convert_qwen2_to_qwen(mha, str(root / "qwen-long"), seq_length=32)}


def engine(path: str, caching: bool, **kw) -> LLMEngine:
    kw.setdefault("max_num_batched_tokens", 64)
    return LLMEngine(path, EngineConfig(device="cpu", dtype="float32", block_size=4,
                                        enable_prefix_caching=caching, **kw))


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0, end_ids=(EOS,))


def shared_prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    system = [rng.randrange(3, VOCAB) for _ in range(23)]
    return [system + [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 12))] for _ in range(n)]


def run(eng: LLMEngine, ps: list[list[int]], n: int, abort_after: int | None = None) -> list[list[int]]:
    """Add the prompts one step apart; abort the first one after `abort_after` steps if given."""
    out: dict[str, list[int]] = {}
    step = 0
    while len(out) < len(ps) or eng.has_unfinished_requests():
        if len(out) < len(ps):
            rid = f"r{len(out)}"
            eng.add_request(rid, ps[len(out)], greedy(n))
            out[rid] = []
        if step == abort_after:
            eng.abort_request("r0")
        for o in eng.step():
            out[o.request_id].extend(o.new_token_ids)
        step += 1
    return [out[f"r{i}"] for i in range(len(ps))]


def test_greedy_tokens_identical_with_caching_and_hits_counted(ckpts):
    ps = shared_prompts(6, seed=1)
    ps.append(ps[0] + [9, 9, 9])  # the whole of an earlier prompt and more
    want = run(engine(ckpts["qwen2"], False), ps, 12)
    eng = engine(ckpts["qwen2"], True)
    assert run(eng, ps, 12) == want
    stats = eng.stats()
    assert stats.prefix_cache_hits >= 5 * 20  # 5 of the 23 shared tokens' blocks after the first prompt
    assert stats.prefix_cache_queries == sum(map(len, ps))
    assert stats.num_free_blocks == stats.num_total_blocks and stats.num_cached_blocks > 0


def test_caching_under_preemption_and_abort_keeps_tokens(ckpts):
    ps = shared_prompts(5, seed=2)
    want = run(engine(ckpts["qwen2"], False), ps, 20)
    eng = engine(ckpts["qwen2"], True, num_kv_blocks=24, max_num_batched_tokens=16)
    got = run(eng, ps, 20, abort_after=3)
    assert got[1:] == want[1:] and got[0] == want[0][:len(got[0])]
    stats = eng.stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    eng.scheduler.blocks.check()
    assert stats.num_free_blocks == stats.num_total_blocks


def test_multi_turn_chat_reuses_its_history(ckpts):
    eng = engine(ckpts["qwen2"], True)
    history = shared_prompts(1, seed=3)[0]
    for turn in range(4):
        request = f"turn{turn}"
        eng.add_request(request, history, SamplingParams(max_tokens=6, temperature=0.0, end_ids=(EOS,),
                                                         return_perf_metrics=True))
        reply, metrics = [], None
        while eng.has_unfinished_requests():
            for o in eng.step():
                reply += o.new_token_ids
                metrics = o.metrics or metrics
        fresh = engine(ckpts["qwen2"], False).generate([history], greedy(len(reply)))[0]
        assert reply == fresh[:len(reply)]
        if turn:  # everything but the block holding the newest tokens comes from the cache
            assert metrics.kv_reused_blocks >= (len(history) - 12) // 4
        history = history + reply + [turn + 10, turn + 11, turn + 12]


def test_dynamic_ntk_shares_only_at_equal_rope_base(ckpts):
    """seq_length 32: a 30-token prompt runs at alpha 1, the same tokens inside a 40-token prompt at alpha 3,
    so their K/V differ and the longer prompt must not take the shorter one's blocks."""
    rng = random.Random(4)
    base = [rng.randrange(3, VOCAB) for _ in range(30)]
    ps = [base, base + [5] * 10, base + [6] * 10]
    want = [engine(ckpts["qwen-long"], False).generate([p], greedy(8))[0] for p in ps]
    eng = engine(ckpts["qwen-long"], True)
    got = [eng.generate([p], greedy(8))[0] for p in ps]
    assert got == want
    hits = eng.stats().prefix_cache_hits
    assert hits == 28  # only the third prompt reuses, the 7 full blocks of the shared 30 tokens

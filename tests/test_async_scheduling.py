"""Async scheduling on the CPU in float32: the engine that schedules and launches the next step before this
one's tokens are in returns exactly what the one-step-at-a-time engine returns (greedy and seeded sampling,
min_tokens, stop sequences, end ids, log probabilities, preemption, aborts, prefix caching), and falls back to
one step at a time while a request needs its outputs on the host (penalties, bad words, logits)."""
from __future__ import annotations

import random

import pytest
from checkpoints import VOCAB, write_qwen2

from qwen_triton import EngineConfig, LLMEngine, SamplingParams

EOS = 2


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return write_qwen2(str(tmp_path_factory.mktemp("async") / "qwen2"), seed=5)


def engine(path: str, async_scheduling: bool, **kw) -> LLMEngine:
    """"on" (auto would leave it off on the CPU, where nothing overlaps) or "off"."""
    kw.setdefault("max_num_batched_tokens", 48)
    return LLMEngine(path, EngineConfig(device="cpu", dtype="float32", block_size=4,
                                        async_scheduling="on" if async_scheduling else "off", **kw))


def mixed_params(n: int) -> list[SamplingParams]:
    kinds = [
        dict(temperature=0.0, min_tokens=8),
        dict(temperature=0.9, top_k=50, seed=7, logprobs=True, top_logprobs=3),
        dict(temperature=0.0, stop_token_ids=((17,), (40, 41))),
        dict(temperature=0.7, top_p=0.9, seed=11),
        dict(temperature=0.0, logprobs=True),
    ]
    return [SamplingParams(max_tokens=10 + 3 * i, end_ids=(EOS, 5, 9), **kinds[i % len(kinds)]) for i in range(n)]


def run(eng: LLMEngine, prompts, params, abort: tuple[int, str] | None = None) -> tuple[dict, list]:
    """Add a request every other step; return tokens, logprobs and finish reasons by request, and whether a
    step was in flight after each call."""
    out: dict[str, dict] = {}
    ahead, step = [], 0
    queue = list(enumerate(zip(prompts, params)))
    while queue or eng.has_unfinished_requests():
        if queue and step % 2 == 0:
            i, (prompt, sp) = queue.pop(0)
            eng.add_request(f"r{i}", prompt, sp)
            out[f"r{i}"] = {"tokens": [], "logprobs": [], "reason": None}
        if abort and step == abort[0]:
            eng.abort_request(abort[1])
        for o in eng.step():
            rec = out[o.request_id]
            rec["tokens"] += o.new_token_ids
            rec["logprobs"] += o.new_logprobs or []
            rec["reason"] = o.finish_reason or rec["reason"]
        ahead.append(eng._inflight is not None)
        step += 1
    return out, ahead


def prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(3, VOCAB) for _ in range(9)]
    return [shared + [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 30))] for _ in range(n)]


@pytest.mark.parametrize("kv_blocks", [None, 20])  # 20 blocks of 4: preemption
def test_async_steps_return_what_one_step_at_a_time_returns(qwen2, kv_blocks):
    ps, params = prompts(8, seed=1), mixed_params(8)
    probe = engine(qwen2, False).generate([ps[2], ps[7]], SamplingParams(max_tokens=6, temperature=0.0))
    params[2] = SamplingParams(max_tokens=20, temperature=0.0, stop_token_ids=((probe[0][3],),))  # a stop word
    params[7] = SamplingParams(max_tokens=20, temperature=0.0, end_ids=(probe[1][2],))  # an end id
    want, _ = run(engine(qwen2, False, num_kv_blocks=kv_blocks), ps, params, abort=(9, "r3"))
    eng = engine(qwen2, True, num_kv_blocks=kv_blocks)
    got, ahead = run(eng, ps, params, abort=(9, "r3"))
    assert got.keys() == want.keys()
    for rid, rec in want.items():
        mine = got[rid]
        assert mine["reason"] == rec["reason"]
        if rec["reason"] == "abort":  # a request joins one step later when the next step is already out
            short, long = sorted((mine["tokens"], rec["tokens"]), key=len)
            assert long[:len(short)] == short
            continue
        assert mine["tokens"] == rec["tokens"]
        # float32 sums over other batch compositions: equal to rounding
        assert mine["logprobs"] == pytest.approx(rec["logprobs"], rel=1e-5, abs=1e-5)
    assert sum(ahead) > len(ahead) // 2  # most steps ran with the next one already launched
    stats = eng.stats()
    assert stats.num_free_blocks == stats.num_total_blocks and eng._inflight is None
    if kv_blocks:
        assert stats.num_preemptions > 0
    assert {r["reason"] for r in got.values()} >= {"stop", "length", "abort"}


def test_requests_needing_their_outputs_run_one_step_at_a_time(qwen2):
    eng = engine(qwen2, True)
    ps = prompts(2, seed=2)
    eng.add_request("plain", ps[0], SamplingParams(max_tokens=30, min_tokens=30, temperature=0.0))
    eng.step()
    assert eng._inflight is not None
    eng.add_request("penalised", ps[1], SamplingParams(max_tokens=4, temperature=0.0, repetition_penalty=1.3))
    for _ in range(2):
        eng.step()
        assert eng._inflight is None  # the penalty reads the output so far: no lookahead while it is live
    while "penalised" in eng.scheduler.requests:
        eng.step()
    eng.step()
    assert eng._inflight is not None  # the plain request goes on with lookahead
    want = engine(qwen2, False).generate([ps[1]], SamplingParams(max_tokens=4, temperature=0.0,
                                                                 repetition_penalty=1.3))
    assert want == engine(qwen2, True).generate([ps[1]], SamplingParams(max_tokens=4, temperature=0.0,
                                                                        repetition_penalty=1.3))

"""What a request can ask for besides tokens, end to end on the CPU in float32:
context and generation logits (against transformers), logit bias, the logits
size cap, and per-request perf metrics."""
from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch
from checkpoints import VOCAB, write_qwen2

from qwen_triton import EngineConfig, InvalidRequestError, LLMEngine, SamplingParams
from qwen_triton.sampler import Sampler, SamplingRow, apply_logit_bias

EOS = 2


@pytest.fixture(scope="module")
def path(tmp_path_factory) -> str:
    return write_qwen2(str(tmp_path_factory.mktemp("outputs-ckpt") / "qwen2"), seed=2)


@pytest.fixture(scope="module")
def hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """transformers' float32 logits [len(ids), vocab] of a token sequence."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def engine_for(path: str, **kw) -> LLMEngine:
    kw.setdefault("block_size", 4)
    kw.setdefault("max_num_batched_tokens", 64)
    return LLMEngine(path, EngineConfig(device="cpu", dtype="float32", **kw))


def prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, VOCAB) for _ in range(n)]


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, temperature=0.0, end_ids=(EOS,), **kw)


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list]:
    """Add every request, step to the end; each request's RequestOutputs in order."""
    for rid, (p, sp) in requests.items():
        engine.add_request(rid, p, sp)
    outs: dict[str, list] = {rid: [] for rid in requests}
    while engine.has_unfinished_requests():
        for o in engine.step():
            outs[o.request_id].append(o)
    return outs


def tokens_of(outs: list) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


def context_of(outs: list) -> np.ndarray:
    """The one context_logits array of a request; it rides on the output with the first token."""
    carrying = [o for o in outs if o.context_logits is not None]
    assert len(carrying) == 1, "context logits must come exactly once"
    first = next(o for o in outs if o.new_token_ids or o.finished)
    assert carrying[0] is first
    return carrying[0].context_logits


# ----------------------------------------------------------------- context logits


def test_context_logits_match_transformers_chunked_and_batched(path, hf):
    """A 45-token prompt over 16-token steps arrives in 3+ chunks, next to other requests."""
    engine = engine_for(path, max_num_batched_tokens=16)
    ps = {"long": prompt(45, 1), "short": prompt(7, 2), "plain": prompt(20, 3), "one": prompt(1, 4)}
    outs = run(engine, {
        "long": (ps["long"], greedy(5, return_context_logits=True)),
        "short": (ps["short"], greedy(5, return_context_logits=True)),
        "plain": (ps["plain"], greedy(5)),
        "one": (ps["one"], greedy(3, return_context_logits=True)),
    })
    for rid in ("long", "short", "one"):
        got = context_of(outs[rid])
        assert got.dtype == np.float32 and got.shape == (len(ps[rid]), VOCAB)
        np.testing.assert_allclose(got, hf_logits(hf, ps[rid]), atol=1e-4, rtol=0)
        assert int(got[-1].argmax()) == tokens_of(outs[rid])[0]  # the row the first token came from
    assert all(o.context_logits is None for o in outs["plain"])


def test_context_logits_survive_preemption_without_duplicates(path, hf):
    """5 blocks of 4 slots: "b" is preempted in the middle of its prefill (some rows
    collected) and recomputed; it still gets exactly its prompt's rows, once."""
    engine = engine_for(path, num_kv_blocks=5, max_num_batched_tokens=8)
    pa, pb = prompt(8, 5), prompt(12, 6)
    engine.add_request("a", pa, greedy(10))
    engine.add_request("b", pb, greedy(2, return_context_logits=True))
    outs: dict[str, list] = {"a": [], "b": []}
    partial_then_preempted = False
    while engine.has_unfinished_requests():
        seq = engine.scheduler.requests.get("b")
        before = (seq.num_preemptions, seq.num_context_rows) if seq else (0, 0)
        for o in engine.step():
            outs[o.request_id].append(o)
        if seq and seq.num_preemptions > before[0] and 0 < before[1] < len(pb):
            partial_then_preempted = True
    assert partial_then_preempted
    got = context_of(outs["b"])
    assert got.shape == (len(pb), VOCAB)
    np.testing.assert_allclose(got, hf_logits(hf, pb), atol=1e-4, rtol=0)
    assert engine.stats().num_free_blocks == engine.stats().num_total_blocks


def test_context_logits_with_many_preemptions_match_alone(path, hf):
    ps = [prompt(10 + 3 * i, 30 + i) for i in range(8)]
    engine = engine_for(path, num_kv_blocks=30)
    outs = run(engine, {f"r{i}": (p, greedy(30, return_context_logits=True)) for i, p in enumerate(ps)})
    assert engine.stats().num_preemptions > 0
    for i, p in enumerate(ps):
        np.testing.assert_allclose(context_of(outs[f"r{i}"]), hf_logits(hf, p), atol=1e-4, rtol=0)


# -------------------------------------------------------------- generation logits


def test_generation_logits_match_transformers(path, hf):
    """Greedy: rows equal transformers' logits at the generated positions and their argmax
    is the token. Sampled with bias and penalties: still the raw model logits."""
    engine = engine_for(path, max_num_batched_tokens=16)
    pg, ps = prompt(20, 7), prompt(9, 8)
    sampled = SamplingParams(max_tokens=12, temperature=0.8, seed=3, repetition_penalty=1.3,
                             logit_bias={5: 3.0, 9: -2.0}, return_generation_logits=True)
    outs = run(engine, {"g": (pg, greedy(12, return_generation_logits=True)), "s": (ps, sampled),
                        "plain": (prompt(5, 9), greedy(4))})
    for rid, p in (("g", pg), ("s", ps)):
        toks = tokens_of(outs[rid])
        assert all(o.generation_logits.shape == (len(o.new_token_ids), VOCAB) for o in outs[rid])
        rows = np.concatenate([o.generation_logits for o in outs[rid]])
        assert rows.dtype == np.float32 and len(rows) == len(toks) == 12
        np.testing.assert_allclose(rows, hf_logits(hf, p + toks)[len(p) - 1:-1], atol=1e-4, rtol=0)
    assert np.concatenate([o.generation_logits for o in outs["g"]]).argmax(-1).tolist() == tokens_of(outs["g"])
    assert all(o.generation_logits is None for o in outs["plain"])


def test_top_logprobs_only_for_rows_that_ask(path, hf):
    """Rows asking for top logprobs get k per token (greedy: transformers' top-k of log_softmax, the chosen
    token first, its logprob equal to its entry); rows that do not get none, and nobody's tokens change."""
    pg, ps, pp = prompt(13, 21), prompt(6, 22), prompt(8, 23)
    sampled = dict(max_tokens=8, temperature=0.9, seed=5, presence_penalty=0.5)
    asked = {"g": (pg, greedy(8, logprobs=True, top_logprobs=4)),
             "s": (ps, SamplingParams(**sampled, logprobs=True, top_logprobs=2)),
             "plain": (pp, greedy(5, logprobs=True))}
    outs = run(engine_for(path, max_num_batched_tokens=16), asked)
    alone = run(engine_for(path, max_num_batched_tokens=16),
                {"g": (pg, greedy(8)), "s": (ps, SamplingParams(**sampled)), "plain": (pp, greedy(5))})
    for rid in asked:
        assert tokens_of(outs[rid]) == tokens_of(alone[rid])
        assert all(o.new_top_logprobs is None for o in alone[rid])
    assert all(o.new_top_logprobs is None for o in outs["plain"])
    for rid, k in (("g", 4), ("s", 2)):
        assert all(o.new_top_logprobs.token_ids.shape == (len(o.new_token_ids), k) for o in outs[rid])
    ids = np.concatenate([o.new_top_logprobs.token_ids for o in outs["g"]])
    lps = np.concatenate([o.new_top_logprobs.logprobs for o in outs["g"]])
    toks = tokens_of(outs["g"])
    chosen = [lp for o in outs["g"] for lp in o.new_logprobs]
    assert ids[:, 0].tolist() == toks and lps[:, 0].tolist() == chosen
    reference = torch.from_numpy(hf_logits(hf, pg + toks)[len(pg) - 1:-1])
    reference[:, EOS] = float("-inf")  # min_tokens bans the end id: the distribution is after penalties
    want = torch.log_softmax(reference, -1).topk(4)
    assert ids.tolist() == want.indices.tolist()
    np.testing.assert_allclose(lps, want.values.numpy(), atol=1e-4, rtol=0)


def test_end_id_step_adds_no_generation_row(path):
    p = prompt(11, 10)
    free = engine_for(path).generate([p], greedy(6))[0]
    end = free[3]
    assert end not in free[:3]
    outs = run(engine_for(path), {"r": (p, SamplingParams(max_tokens=6, temperature=0, end_ids=(end,),
                                                         return_generation_logits=True))})["r"]
    assert tokens_of(outs) == free[:3]
    assert outs[-1].finish_reason == "stop" and outs[-1].new_token_ids == []
    assert outs[-1].generation_logits.shape == (0, VOCAB)
    assert sum(len(o.generation_logits) for o in outs) == 3


# ---------------------------------------------------------------------- logit bias


def test_logit_bias_in_the_sampler():
    logits = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    before = logits.clone()

    def greedy_row(bias=()) -> SamplingRow:
        return SamplingRow(SamplingParams(temperature=0.0, logit_bias=bias), 0, (1,), ())

    plain = [t.token_id for t in Sampler()(logits, [greedy_row()] * 3)]
    best, second = logits[1].topk(2).indices.tolist()
    low = int(logits[1].argmin())
    cases = [({low: 100.0}, low), ({best: -100.0}, second)]
    for bias, want in cases:
        got = [t.token_id for t in Sampler()(logits, [greedy_row(), greedy_row(bias), greedy_row()])]
        assert got == [plain[0], want, plain[2]]  # only its own row moves
    assert torch.equal(logits, before)  # the caller's (raw) logits stay untouched
    rows = [greedy_row()] * 3
    assert apply_logit_bias(logits, rows) is logits  # no bias: no copy, no work


def test_logit_bias_in_the_engine(path):
    p = prompt(10, 11)
    free = engine_for(path).generate([p], greedy(5))[0]
    forced = engine_for(path).generate([p], greedy(5, logit_bias={77: 1000.0}))[0]
    assert forced == [77] * 5
    banned = engine_for(path).generate([p], greedy(1, logit_bias=[(free[0], -1000.0)]))[0]
    assert banned != free[:1]


@pytest.mark.parametrize("bad", [VOCAB, -1])
def test_logit_bias_outside_vocabulary_rejected(path, bad):
    with pytest.raises(InvalidRequestError) as err:
        engine_for(path).validate([5, 6], SamplingParams(max_tokens=2, logit_bias={bad: 1.0}))
    assert err.value.field == "logit_bias"


# ---------------------------------------------------------------------- the cap


def test_logits_size_cap(path):
    engine = engine_for(path, max_logits_bytes=10 * VOCAB * 4)  # 10 rows
    engine.validate(prompt(10, 1), SamplingParams(max_tokens=10, return_context_logits=True,
                                                  return_generation_logits=True))
    engine.validate(prompt(40, 1), SamplingParams(max_tokens=40))  # not asked: no cap
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request("c", prompt(11, 1), SamplingParams(max_tokens=2, return_context_logits=True))
    assert err.value.field == "return_context_logits"
    assert str(10 * VOCAB * 4) in str(err.value) and str(11 * VOCAB * 4) in str(err.value)
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request("g", prompt(3, 1), SamplingParams(max_tokens=11, return_generation_logits=True))
    assert err.value.field == "return_generation_logits"
    assert str(10 * VOCAB * 4) in str(err.value)
    assert not engine.has_unfinished_requests()


# ------------------------------------------------------------------------ metrics


def test_perf_metrics_on_every_output(path):
    engine = engine_for(path, max_num_batched_tokens=8)
    earlier = time.time_ns() - 5_000_000
    engine.add_request("m", prompt(20, 12), greedy(6, return_perf_metrics=True), arrival_time_ns=earlier)
    engine.add_request("n", prompt(5, 13), greedy(6))
    outs: dict[str, list] = {"m": [], "n": []}
    while engine.has_unfinished_requests():
        for o in engine.step():
            outs[o.request_id].append(o)
    assert all(o.metrics is None for o in outs["n"])
    ms = [o.metrics for o in outs["m"]]
    assert len(ms) == 6 and all(m is not None for m in ms)
    for m in ms:
        assert m.arrival_time_ns == earlier
        assert 0 < m.arrival_time_ns <= m.first_scheduled_time_ns <= m.first_token_time_ns <= m.last_token_time_ns
        assert m.kv_reused_blocks == 0 and m.kv_new_blocks >= m.kv_total_blocks > 0
    assert [m.first_token_time_ns for m in ms] == [ms[0].first_token_time_ns] * 6
    assert [m.last_token_time_ns for m in ms] == sorted(m.last_token_time_ns for m in ms)
    assert ms[-1].kv_total_blocks == ms[-1].kv_new_blocks == 7  # K/V of 25 tokens (the 6th is never fed back)


def test_perf_metrics_default_arrival_and_abort(path):
    engine = engine_for(path)
    t0 = time.time_ns()
    engine.add_request("x", prompt(6, 14), greedy(50, return_perf_metrics=True))
    first = engine.step()[0].metrics
    assert t0 <= first.arrival_time_ns <= first.first_scheduled_time_ns <= first.first_token_time_ns
    engine.abort_request("x")
    final = engine.step()[0]
    assert final.finish_reason == "abort" and final.metrics.last_token_time_ns >= first.last_token_time_ns
    engine.add_request("y", prompt(6, 14), greedy(3, return_perf_metrics=True), arrival_time_ns=2 ** 62)
    assert engine.scheduler.requests["y"].arrival_time_ns <= time.time_ns()  # never in the future


# ------------------------------------------------------------ CUDA-graph decode path


def counted(fn, calls: list):
    def wrapper(*args):
        calls.append(args)
        return fn(*args)
    return wrapper


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_logits_through_cuda_graphs_equal_eager(path, hf):
    """A 2-token budget makes every step after the first decode-only, so the graphs run
    the decodes and also "b"'s whole prompt, one context row (that samples nothing) a step."""
    pa, pb = prompt(2, 15), prompt(9, 16)
    requests = {"a": (pa, greedy(12, return_generation_logits=True)),
                "b": (pb, greedy(6, return_context_logits=True, return_generation_logits=True))}
    results = []
    for eager in (False, True):
        engine = LLMEngine(path, EngineConfig(device="cuda", dtype="float32", block_size=16, num_kv_blocks=16,
                                              max_num_seqs=4, max_num_batched_tokens=2, enforce_eager=eager))
        assert (engine.runner.graphs is None) == eager
        replays: list[int] = []
        if not eager:
            engine.runner.graphs.run = counted(engine.runner.graphs.run, replays)
        results.append(run(engine, requests))
        assert eager or len(replays) >= len(pb)  # every step after "a"'s 2-token prefill
    graphs, eager = results
    for rid, (p, _) in requests.items():
        assert tokens_of(graphs[rid]) == tokens_of(eager[rid])
        gen = np.concatenate([o.generation_logits for o in graphs[rid]])
        np.testing.assert_allclose(gen, np.concatenate([o.generation_logits for o in eager[rid]]),
                                   atol=1e-5, rtol=0)
        np.testing.assert_allclose(gen, hf_logits(hf, p + tokens_of(graphs[rid]))[len(p) - 1:-1], atol=1e-3, rtol=0)
    np.testing.assert_allclose(context_of(graphs["b"]), context_of(eager["b"]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(context_of(graphs["b"]), hf_logits(hf, pb), atol=1e-3, rtol=0)

"""The engine end to end on the CPU in float32: tokens identical to transformers,
batch invariance, preemption, seeded sampling, aborts and bad input."""
from __future__ import annotations

import random

import pytest
import torch
from checkpoints import VOCAB, convert_qwen2_to_qwen, write_llama, write_qwen2, write_qwen2_mha, write_qwen3
from reference_qwen import QwenReference

from qwen_triton import BackgroundEngine, EngineConfig, InvalidRequestError, LLMEngine, SamplingParams

NEW_TOKENS = 64
EOS = 2


def greedy(max_tokens: int = NEW_TOKENS, **kw) -> SamplingParams:
    # min_tokens == max_tokens masks EOS, as transformers' min_new_tokens does
    return SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, temperature=0.0, end_ids=(EOS,), **kw)


def prompts(n: int, seed: int = 0, lo: int = 3, hi: int = 40) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def hf_greedy(path: str, prompt: list[int], new_tokens: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = _hf_models.get(path)
    if model is None:
        model = _hf_models[path] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, pad_token_id=0)
    return out[0, len(prompt):].tolist()


_hf_models: dict = {}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-ckpts")
    mha = write_qwen2_mha(str(root / "qwen2-mha"), seed=4)
    return {
        "llama": write_llama(str(root / "llama"), seed=1),
        "qwen2": write_qwen2(str(root / "qwen2"), seed=2),
        "qwen3": write_qwen3(str(root / "qwen3"), seed=3),
        "qwen2-mha": mha,
        # seq_length far beyond the test lengths: exactly the Qwen2 it came from
        "qwen": convert_qwen2_to_qwen(mha, str(root / "qwen"), seq_length=256),
        # seq_length 32: logn and dynamic NTK switch on within the test lengths
        "qwen-long": convert_qwen2_to_qwen(mha, str(root / "qwen-long"), seq_length=32),
    }


def engine_for(path: str, **kw) -> LLMEngine:
    kw.setdefault("block_size", 4)
    kw.setdefault("max_num_batched_tokens", 64)
    return LLMEngine(path, EngineConfig(device="cpu", dtype="float32", **kw))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "qwen"])
def test_greedy_tokens_identical_to_transformers(ckpts, arch):
    engine = engine_for(ckpts[arch])
    ps = prompts(4, seed=10)
    ours = engine.generate(ps, greedy())
    reference = ckpts["qwen2-mha"] if arch == "qwen" else ckpts[arch]
    for prompt, got in zip(ps, ours):
        assert len(got) == NEW_TOKENS
        assert got == hf_greedy(reference, prompt, NEW_TOKENS)


def test_qwen_logn_and_dynamic_ntk_beyond_seq_length(ckpts):
    """seq_length 32: prompts below and above it, generating well past it."""
    path = ckpts["qwen-long"]
    ref = QwenReference(path)
    engine = engine_for(path)
    ps = [prompts(1, seed=s, lo=n, hi=n)[0] for s, n in ((1, 12), (2, 31), (3, 45), (4, 70))]
    ours = engine.generate(ps, greedy(40))
    for prompt, got in zip(ps, ours):
        assert got == ref.greedy(prompt, 40)[0]


def run_staggered(engine: LLMEngine, ps: list[list[int]], params: list[SamplingParams],
                  join_every: int = 2) -> list[list[int]]:
    """Add one request every `join_every` steps while the others run."""
    out: dict[str, list[int]] = {}
    pending = [(f"r{i}", p, sp) for i, (p, sp) in enumerate(zip(ps, params))]
    step = 0
    while pending or engine.has_unfinished_requests():
        if pending and step % join_every == 0:
            rid, p, sp = pending.pop(0)
            engine.add_request(rid, p, sp)
            out[rid] = []
        for o in engine.step():
            out[o.request_id].extend(o.new_token_ids)
        step += 1
    return [out[f"r{i}"] for i in range(len(ps))]


def test_batch_invariance_with_staggered_joins(ckpts):
    path = ckpts["qwen2"]
    ps = prompts(10, seed=20, lo=2, hi=60)
    lengths = [12 + 5 * i for i in range(10)]
    params = [greedy(n) for n in lengths]
    alone = [engine_for(path).generate([p], sp)[0] for p, sp in zip(ps, params)]
    engine = engine_for(path, max_num_batched_tokens=32)  # forces chunked prefill next to decodes
    together = run_staggered(engine, ps, params)
    assert together == alone
    assert engine.stats().max_running_seen >= 8


def test_preemption_keeps_outputs(ckpts):
    path = ckpts["qwen2"]
    ps = prompts(8, seed=30, lo=10, hi=30)
    alone = [engine_for(path).generate([p], greedy(40))[0] for p in ps]
    # 30 blocks of 4 tokens = 120 slots for 8 sequences that grow to ~60 tokens each
    engine = engine_for(path, num_kv_blocks=30)
    together = engine.generate(ps, greedy(40))
    assert together == alone
    stats = engine.stats()
    assert stats.num_preemptions > 0
    assert stats.num_free_blocks == stats.num_total_blocks


def test_seeded_sampling_same_alone_and_in_batch(ckpts):
    path = ckpts["llama"]
    ps = prompts(8, seed=40)
    params = [SamplingParams(max_tokens=24, temperature=0.9, top_p=0.9, top_k=50, seed=1000 + i,
                             repetition_penalty=1.1) for i in range(8)]
    alone = [engine_for(path).generate([p], sp)[0] for p, sp in zip(ps, params)]
    batch = run_staggered(engine_for(path), ps, params, join_every=3)
    assert batch == alone
    assert len({tuple(t) for t in alone}) > 1


def test_abort_mid_generation_returns_every_block(ckpts):
    engine = engine_for(ckpts["qwen2"])
    total = engine.stats().num_total_blocks
    for i, p in enumerate(prompts(3, seed=50)):
        engine.add_request(f"r{i}", p, greedy(50))
    for _ in range(5):
        engine.step()
    assert engine.stats().num_free_blocks < total
    assert engine.abort_request("r1")
    finals = [o for o in engine.step() if o.finished]
    assert [(o.request_id, o.finish_reason) for o in finals] == [("r1", "abort")]
    engine.abort_request("r0")
    engine.abort_request("r2")
    engine.step()
    assert engine.stats().num_free_blocks == total and not engine.has_unfinished_requests()


def test_end_ids_and_stop_sequences_end_generation(ckpts):
    path = ckpts["qwen2"]
    p = prompts(1, seed=60)[0]
    free = engine_for(path).generate([p], greedy(30))[0]
    first, third = free[0], free[2]
    engine = engine_for(path)
    got = engine.generate([p], SamplingParams(max_tokens=30, temperature=0, end_ids=(third,)))[0]
    assert got == free[:free.index(third)]
    got = engine.generate([p], SamplingParams(max_tokens=30, temperature=0, stop_token_ids=[free[1:3]]))[0]
    assert got == free[:3]
    # min_tokens keeps an end id from ending the reply early
    got = engine.generate([p], SamplingParams(max_tokens=5, temperature=0, end_ids=(first,), min_tokens=5))[0]
    assert len(got) == 5


def test_logprobs_are_returned_per_token(ckpts):
    engine = engine_for(ckpts["qwen2"])
    engine.add_request("a", prompts(1)[0], greedy(6, logprobs=True))
    lps = []
    while engine.has_unfinished_requests():
        for o in engine.step():
            lps.extend(o.new_logprobs or [])
    assert len(lps) == 6 and all(lp <= 0 for lp in lps)


BAD_REQUESTS = {
    "empty prompt": ([], dict(max_tokens=4), "prompt"),
    "prompt over context": ([5] * 512, dict(max_tokens=4), "prompt"),
    "max_tokens over context": ([5] * 10, dict(max_tokens=510), "max_tokens"),
    "unknown token id": ([5, VOCAB + 7], dict(max_tokens=4), "prompt"),
    "negative token id": ([5, -1], dict(max_tokens=4), "prompt"),
    "end id outside vocab": ([5], dict(max_tokens=4, end_ids=(VOCAB,)), "sampling"),
}

BAD_PARAMS = {
    "temperature < 0": (dict(temperature=-0.5), "temperature"),
    "top_p = 0": (dict(top_p=0.0), "top_p"),
    "top_p > 1": (dict(top_p=1.5), "top_p"),
    "negative top_k": (dict(top_k=-1), "top_k"),
    "max_tokens = 0": (dict(max_tokens=0), "max_tokens"),
    "min_tokens > max_tokens": (dict(max_tokens=2, min_tokens=3), "min_tokens"),
    "empty stop word": (dict(stop_token_ids=[[]]), "stop_words"),
}


@pytest.fixture(scope="module")
def background(ckpts):
    bg = BackgroundEngine(engine_for(ckpts["qwen2"]))
    yield bg
    bg.shutdown()


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_rejected_while_good_one_completes(ckpts, background, case):
    good_prompt = prompts(1, seed=70)[0]
    expected = engine_for(ckpts["qwen2"]).generate([good_prompt], greedy(20))[0]
    stream = background.submit(f"good-{case}", good_prompt, greedy(20))
    prompt, kw, field = BAD_REQUESTS[case]
    with pytest.raises(InvalidRequestError) as err:
        background.submit(f"bad-{case}", prompt, SamplingParams(**kw))
    assert err.value.field == field
    tokens, final = stream.result(timeout=60)
    assert tokens == expected and final.finish_reason == "length"
    assert background.is_alive


@pytest.mark.parametrize("case", BAD_PARAMS)
def test_bad_sampling_params_raise_typed_errors(case):
    kw, field = BAD_PARAMS[case]
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kw)
    assert err.value.field == field and field in str(err.value)


def test_background_streams_concurrent_requests_and_cancel(ckpts, background):
    ps = prompts(6, seed=80)
    expected = engine_for(ckpts["qwen2"]).generate(ps, greedy(16))
    streams = [background.submit(f"c{i}", p, greedy(16)) for i, p in enumerate(ps)]
    victim = background.submit("victim", ps[0], greedy(200))
    first = victim.get(timeout=30)
    assert not first.finished
    victim.cancel()
    rest, final = victim.result(timeout=30)
    assert final.finish_reason == "abort"
    assert [s.result(timeout=60)[0] for s in streams] == expected
    stats = background.stats()
    assert stats.num_free_blocks == stats.num_total_blocks

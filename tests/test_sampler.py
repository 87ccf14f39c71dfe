"""Sampler: each processor against transformers, and seeded, batch-invariant draws."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from qwen_triton.errors import InvalidRequestError
from qwen_triton.penalties import _ends_with
from qwen_triton.sampler import (
    SampledToken,
    Sampler,
    SamplingRow,
    apply_penalties,
    apply_temperature_,
    apply_top_k_,
    apply_top_p_,
    draw,
    step_seed,
)
from qwen_triton.sampling_params import SamplingParams

VOCAB = 64


def row(seed=0, prompt=(1, 2, 3), output=(), **params) -> SamplingRow:
    return SamplingRow(SamplingParams(**params), seed, tuple(prompt), tuple(output))


def random_logits(n: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=g) * 3


# ----------------------------------------------------------- processors vs HF

def test_repetition_penalty_matches_transformers():
    logits = random_logits(4)
    rows = [row(prompt=(1, 5, 5, 9), output=(9, 12, 1), repetition_penalty=1.3),
            row(prompt=(0, 63), output=(), repetition_penalty=0.7),
            row(prompt=(4,), output=(4, 4, 4, 8), repetition_penalty=2.0),
            row(prompt=(7, 8), output=(7,))]                       # 1.0: untouched
    got = apply_penalties(logits, rows)
    for i, r in enumerate(rows):
        ids = torch.tensor([list(r.prompt_token_ids) + list(r.output_token_ids)])
        if r.params.repetition_penalty == 1.0:
            want = logits[i:i + 1]
        else:
            want = RepetitionPenaltyLogitsProcessor(r.params.repetition_penalty)(ids, logits[i:i + 1].clone())
        torch.testing.assert_close(got[i:i + 1], want, rtol=0, atol=0)


def test_presence_frequency_match_plain_reference():
    logits = random_logits(3)
    rows = [row(prompt=(2, 2, 2), output=(3, 3, 5, 3), presence_penalty=0.5, frequency_penalty=0.25),
            row(prompt=(), output=(10, 11), presence_penalty=-1.0),
            row(prompt=(4,), output=(4, 6, 6), frequency_penalty=2.0)]
    got = apply_penalties(logits, rows)
    want = logits.clone()
    for i, r in enumerate(rows):
        for tok in set(r.output_token_ids):                      # prompt tokens are not penalised
            count = list(r.output_token_ids).count(tok)
            want[i, tok] -= r.params.presence_penalty + r.params.frequency_penalty * count
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7])
def test_temperature_matches_transformers(temperature):
    logits = random_logits(3)
    got = apply_temperature_(logits.clone(), [temperature] * 3)
    torch.testing.assert_close(got, TemperatureLogitsWarper(temperature)(None, logits.clone()), rtol=0, atol=0)


def test_top_k_matches_transformers_per_row():
    logits = random_logits(5)
    logits[4, :10] = 1.0                                          # ties at the k-th value survive
    ks = [1, 7, 0, VOCAB + 5, 4]
    got = apply_top_k_(logits.clone(), ks)
    for i, k in enumerate(ks):
        want = logits[i:i + 1] if k == 0 else TopKLogitsWarper(k)(None, logits[i:i + 1].clone())
        torch.testing.assert_close(got[i:i + 1], want, rtol=0, atol=0)


def test_top_p_matches_transformers_per_row():
    logits = random_logits(6)
    ps = [0.05, 0.5, 0.9, 1.0, 0.999, 0.3]
    got = apply_top_p_(logits.clone(), ps)
    for i, p in enumerate(ps):
        want = logits[i:i + 1] if p == 1.0 else TopPLogitsWarper(p)(None, logits[i:i + 1].clone())
        torch.testing.assert_close(got[i:i + 1], want, rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(0, 80), p=st.floats(0.01, 1.0), t=st.floats(0.05, 3.0), seed=st.integers(0, 1000))
def test_warper_chain_matches_transformers(k, p, t, seed):
    logits = random_logits(1, seed=seed)
    got = apply_top_p_(apply_top_k_(apply_temperature_(logits.clone(), [t]), [k]), [p])
    want = TemperatureLogitsWarper(t)(None, logits.clone())
    if k:
        want = TopKLogitsWarper(k)(None, want)
    if p < 1.0:
        want = TopPLogitsWarper(p)(None, want)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ------------------------------------------------------------ masks

def test_min_tokens_masks_end_ids_then_stops():
    logits = random_logits(1)
    end_ids = (5, 9)
    for step in range(4):
        r = row(output=tuple(range(20, 20 + step)), min_tokens=2, end_ids=end_ids)
        got = apply_penalties(logits, [r])[0]
        masked = torch.isinf(got[list(end_ids)]).all().item()
        assert masked == (step < 2)
        assert torch.isfinite(got[[i for i in range(VOCAB) if i not in end_ids]]).all()


def test_bad_words_single_and_multi_token():
    logits = random_logits(5)
    words = ((3,), (5, 6, 7))
    rows = [row(prompt=(1,), output=(), bad_token_ids=words),            # only (3,) applies
            row(prompt=(1,), output=(5, 6), bad_token_ids=words),        # ends with 5 6 -> ban 7
            row(prompt=(1, 5), output=(6,), bad_token_ids=words),        # prefix spans prompt/output
            row(prompt=(6,), output=(5,), bad_token_ids=words),          # wrong order
            row(prompt=(), output=(6,), bad_token_ids=words)]            # too short
    got = apply_penalties(logits, rows)
    banned = torch.isinf(got)
    assert banned[:, 3].all()
    assert banned[:, 7].tolist() == [False, True, True, False, False]
    assert banned.sum().item() == 5 + 2


@settings(max_examples=100, deadline=None)
@given(prompt=st.lists(st.integers(0, 3), max_size=5), output=st.lists(st.integers(0, 3), max_size=5),
       suffix=st.lists(st.integers(0, 3), max_size=4))
def test_ends_with_matches_concatenation(prompt, output, suffix):
    seq = prompt + output
    want = len(seq) >= len(suffix) and seq[len(seq) - len(suffix):] == suffix
    assert _ends_with(prompt, output, suffix) == want


# ------------------------------------------------------------ greedy

def test_greedy_is_argmax_of_penalised_logits():
    logits = random_logits(4)
    logits[3, 10] = logits[3, 20] = logits[3].max() + 1.0          # tie -> lowest id
    rows = [row(temperature=0.0),
            row(top_k=1, temperature=0.7, output=(int(logits[1].argmax()),), repetition_penalty=100.0),
            row(temperature=0.0, bad_token_ids=((int(logits[2].argmax()),),)),
            row(temperature=0.0)]
    got = [t.token_id for t in Sampler()(logits, rows)]
    assert got == apply_penalties(logits, rows).argmax(-1).tolist()
    assert got[0] == logits[0].argmax().item() and got[3] == 10
    assert got[1] != logits[1].argmax().item() and got[2] != logits[2].argmax().item()


def test_defaults_do_not_copy_or_modify_logits():
    logits = random_logits(2)
    before = logits.clone()
    assert apply_penalties(logits, [row(), row()]) is logits
    Sampler()(logits, [row(repetition_penalty=1.5, top_k=3, top_p=0.5), row(temperature=0.5)])
    assert torch.equal(logits, before)


# ------------------------------------------------------------ seeded sampling

OTHERS = [row(seed=11, temperature=0.0), row(seed=12, top_k=5), row(seed=13, top_p=0.3, temperature=2.0),
          row(seed=14, repetition_penalty=1.5, output=(1, 2)), row(seed=15, logprobs=True),
          row(seed=16, presence_penalty=1.0, output=(4,)), row(seed=17, min_tokens=3, end_ids=(0,))]


@pytest.mark.parametrize("target", [row(seed=1234), row(seed=99, top_k=20, top_p=0.9, temperature=0.8)])
def test_same_seed_and_step_same_token_in_any_batch(target):
    sampler = Sampler()
    other_logits = random_logits(len(OTHERS), seed=7)
    for step in range(6):
        target = SamplingRow(target.params, target.seed, target.prompt_token_ids, tuple(range(30, 30 + step)))
        x = random_logits(1, seed=100 + step)
        alone = sampler(x, [target])[0].token_id
        first = sampler(torch.cat([x, other_logits]), [target, *OTHERS])[0].token_id
        last = sampler(torch.cat([other_logits, x]), [*OTHERS, target])[-1].token_id
        again = sampler(x.clone(), [target])[0].token_id
        assert alone == first == last == again


def test_different_seeds_give_different_streams():
    flat = torch.zeros(1, 1000)                                   # uniform: streams are pure noise

    def stream(seed):
        return [Sampler()(flat, [row(seed=seed, output=(0,) * s)])[0].token_id for s in range(20)]

    a, b, c = stream(1), stream(2), stream(1)
    assert a == c
    assert sum(x == y for x, y in zip(a, b)) <= 2
    assert len(set(a)) >= 15                                      # steps decorrelate too


def test_step_seed_decorrelates_neighbours():
    seeds = {step_seed(s, t) for s in range(64) for t in range(64)}
    assert len(seeds) == 64 * 64
    assert all(0 <= x < 2**64 for x in seeds)
    # flipping the seed's low bit flips about half of the output bits
    flips = [(step_seed(s, 0) ^ step_seed(s ^ 1, 0)).bit_count() for s in range(0, 256, 2)]
    assert 24 < sum(flips) / len(flips) < 40


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def draw_many(logits_row: torch.Tensor, n: int, **params) -> torch.Tensor:
    rows = [row(seed=s, **params) for s in range(n)]
    tokens = Sampler()(logits_row.expand(n, -1).contiguous(), rows)
    return torch.tensor([t.token_id for t in tokens])


def test_empirical_distribution_matches_softmax():
    logits = torch.tensor([[1.0, 0.5, -0.3, 2.0, 0.0, -1.0]])
    temperature = 0.7
    n = 20000
    tokens = draw_many(logits, n, temperature=temperature)
    counts = torch.bincount(tokens, minlength=6).double()
    probs = torch.softmax(logits[0].double() / temperature, -1)
    # df = 5: P(chi2 > 25) ~ 1.4e-4
    assert chi_square(counts, probs) < 25.0


@pytest.mark.parametrize("params", [{"top_k": 3}, {"top_p": 0.7}, {"top_k": 4, "top_p": 0.8, "temperature": 1.5}])
def test_filtered_tokens_are_never_drawn(params):
    logits = torch.tensor([[1.0, 0.5, -0.3, 2.0, 0.0, -1.0, 1.5, 0.2]])
    n = 8000
    tokens = draw_many(logits, n, **params)
    t = params.get("temperature", 1.0)
    kept = apply_top_p_(apply_top_k_(logits / t, [params.get("top_k", 0)]), [params.get("top_p", 1.0)])[0]
    allowed = torch.isfinite(kept)
    counts = torch.bincount(tokens, minlength=8).double()
    assert counts[~allowed].sum() == 0
    probs = torch.softmax(kept[allowed].double(), -1)
    assert chi_square(counts[allowed], probs) < 10.0 + 6 * math.sqrt(2 * (int(allowed.sum()) - 1))


def test_draw_survives_all_but_one_masked():
    logits = torch.full((3, 16), float("-inf"))
    logits[torch.arange(3), torch.tensor([0, 7, 15])] = 0.0
    assert draw(logits, [(s, 0) for s in range(3)]).tolist() == [0, 7, 15]


# ------------------------------------------------------------ logprobs

def test_logprobs_match_log_softmax():
    logits = random_logits(4)
    rows = [row(seed=1, logprobs=True, temperature=0.0, repetition_penalty=1.2, output=(5,)),
            row(seed=2, logprobs=True, temperature=0.6, top_k=5, top_p=0.8),
            row(seed=3, logprobs=False),
            row(seed=4, logprobs=True, presence_penalty=0.5, output=(1, 1))]
    out = Sampler()(logits, rows)
    assert all(isinstance(t, SampledToken) for t in out)
    assert out[2].logprob is None
    penalised = apply_penalties(logits, rows)
    temps = [1.0, 0.6, 1.0, 1.0]
    for i in (0, 1, 3):
        assert math.isfinite(out[i].logprob)
        want = torch.log_softmax(penalised[i] / temps[i], -1)[out[i].token_id].item()
        assert out[i].logprob == pytest.approx(want, abs=1e-5)


def test_rejects_mismatched_rows():
    with pytest.raises(ValueError):
        Sampler()(random_logits(2), [row()])
    assert Sampler()(torch.empty(0, VOCAB), []) == []


# ------------------------------------------------------------ top logprobs

def _processed(logits: torch.Tensor, rows, temps) -> torch.Tensor:
    """Plain-torch reference of the distribution the sampler scores: bias, penalties, then temperature
    (1 for greedy rows)."""
    return apply_penalties(logits, rows) / torch.tensor(temps)[:, None]


def test_top_logprobs_match_plain_torch_reference():
    logits = random_logits(6)
    rows = [row(seed=1, logprobs=True, top_logprobs=3, temperature=0.0, repetition_penalty=1.3, output=(5, 9)),
            row(seed=2, logprobs=True, top_logprobs=5, temperature=0.7, top_k=4, top_p=0.9),
            row(seed=3, logprobs=True),                                          # chosen token's only
            row(seed=4),                                                         # nothing asked
            row(seed=5, logprobs=True, top_logprobs=1, presence_penalty=1.5, output=(2, 2), temperature=1.3),
            row(seed=6, logprobs=True, top_logprobs=20, temperature=0.0, logit_bias={7: 5.0})]
    out = Sampler()(logits, rows)
    temps = [1.0, 0.7, 1.0, 1.0, 1.3, 1.0]
    biased = logits.clone()
    biased[5, 7] += 5.0
    reference = torch.log_softmax(_processed(biased, rows, temps), dim=-1)          # [N, V]
    for i, (got, r) in enumerate(zip(out, rows)):
        k = r.params.top_logprobs
        if not k:
            assert got.top_logprobs is None
            continue
        want_lps, want_ids = reference[i].topk(k)
        top = got.top_logprobs
        assert top.token_ids.shape == top.logprobs.shape == (1, k)
        assert top.token_ids.dtype == np.int32 and top.logprobs.dtype == np.float32
        assert top.token_ids[0].tolist() == want_ids.tolist()
        assert top.logprobs[0] == pytest.approx(want_lps.numpy(), abs=1e-5)
        assert list(top.logprobs[0]) == sorted(top.logprobs[0], reverse=True)
        ids = top.token_ids[0].tolist()
        if got.token_id in ids:  # the same distribution: its entry is the chosen token's logprob, exactly
            assert float(top.logprobs[0][ids.index(got.token_id)]) == got.logprob
        if r.params.greedy:
            assert ids[0] == got.token_id
    assert out[2].logprob is not None and out[3].logprob is None


def test_top_logprobs_leave_other_rows_alone():
    """Rows asking for top logprobs change no token of any row, theirs included."""
    logits = random_logits(4, seed=3)
    plain = [row(seed=s, temperature=t, logprobs=lp) for s, t, lp in ((1, 0.0, True), (2, 0.8, False),
                                                                      (3, 1.0, True), (4, 0.0, False))]
    asking = [SamplingRow(SamplingParams(temperature=r.params.temperature, logprobs=True, top_logprobs=4),
                          r.seed, r.prompt_token_ids, r.output_token_ids) for r in plain]
    base = Sampler()(logits, plain)
    mixed = Sampler()(logits, [asking[0], plain[1], asking[2], plain[3]])
    assert [t.token_id for t in mixed] == [t.token_id for t in base]
    assert [t.logprob for t in mixed] == [t.logprob for t in base]
    assert mixed[1].top_logprobs is None and mixed[3].top_logprobs is None
    assert mixed[0].top_logprobs.token_ids[0, 0] == base[0].token_id          # greedy: the top-1


def test_top_logprobs_need_logprobs_and_a_bound():
    for bad in (dict(top_logprobs=3), dict(logprobs=True, top_logprobs=21), dict(logprobs=True, top_logprobs=-1)):
        with pytest.raises(InvalidRequestError) as err:
            SamplingParams(**bad)
        assert err.value.field == "top_logprobs"

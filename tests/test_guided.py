"""Guided (grammar-constrained) decoding in the engine, on the CPU in float32: the tiny random-weight
default model (the Qwen tiktoken vocabulary) and the real Qwen2.5-Coder-0.5B-Instruct (its
tokenizer.json). Outputs are checked by parsing them (json, jsonschema, re), never against stored text."""
from __future__ import annotations

import gc
import json
import re
import weakref

import jsonschema
import pytest
import torch

from qwen_triton import BackgroundEngine, EngineConfig, InvalidRequestError, LLMEngine, SamplingParams
from qwen_triton.chat import load_tokenizer, parse_messages, render_prompt
from qwen_triton.guided import TokenMask, apply_token_mask_
from qwen_triton.sampler import Sampler, SamplingRow
from qwen_triton.sampling_params import GuidedDecodingParams as Guide

# every value bounded: a random-weight model fills free strings and numbers until max_tokens
SCHEMA = {"type": "object", "properties": {
    "color": {"enum": ["red", "green", "blue"]}, "n": {"type": "integer", "minimum": 0, "maximum": 99},
    "ok": {"type": "boolean"}}, "required": ["color", "n", "ok"], "additionalProperties": False}
REGEX = r"(cat|dog)-[0-9]{2,4}"
EBNF = 'root ::= answer "." \nanswer ::= "yes" | "no" | "maybe"'


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint folder, its tokenizer): the build's random-weight Qwen2 with the real Qwen vocabulary."""
    from build.default_checkpoint import ensure_default_checkpoint

    path = ensure_default_checkpoint(tmp_path_factory.mktemp("guided")).path
    return str(path), load_tokenizer(path)


def engine(path: str, **kw) -> LLMEngine:
    return LLMEngine(path, EngineConfig(device="cpu", dtype="float32", **kw))


def params(tok, guide: Guide | None, max_tokens: int = 120, **kw) -> SamplingParams:
    kw.setdefault("temperature", 0.0)
    return SamplingParams(max_tokens=max_tokens, end_ids=tok.eos_ids, guided_decoding=guide, **kw)


def run(eng: LLMEngine, prompts: list[list[int]], ps: list[SamplingParams]) -> list[tuple[list[int], str]]:
    """(output tokens, finish reason) of each request, all added at once."""
    ids = [f"g{i}" for i in range(len(prompts))]
    for rid, prompt, p in zip(ids, prompts, ps):
        eng.add_request(rid, prompt, p)
    tokens: dict[str, list[int]] = {rid: [] for rid in ids}
    reasons: dict[str, str] = {}
    while eng.has_unfinished_requests():
        for out in eng.step():
            tokens[out.request_id] += out.new_token_ids
            if out.finished:
                reasons[out.request_id] = out.finish_reason
    return [(tokens[rid], reasons[rid]) for rid in ids]


def schema_guide() -> Guide:
    return Guide("json_schema", json.dumps(SCHEMA))


# -- the tiny random-weight model ---------------------------------------------------------------------------

def test_each_guide_type_is_followed_and_ends_the_output(tiny):
    path, tok = tiny
    prompt = tok.encode("Describe the sky:")
    ps = [params(tok, schema_guide()), params(tok, schema_guide(), temperature=0.9, seed=7),
          params(tok, Guide("regex", REGEX)), params(tok, Guide("ebnf_grammar", EBNF))]
    (greedy, _), (sampled, _), (regex, _), (ebnf, _) = results = run(engine(path), [prompt] * 4, ps)
    assert all(reason == "stop" for _, reason in results), results  # the grammar's end ended each one
    for out in (greedy, sampled):
        jsonschema.validate(json.loads(tok.decode(out)), SCHEMA)
    assert re.fullmatch(REGEX, tok.decode(regex))
    assert tok.decode(ebnf) in ("yes.", "no.", "maybe.")


def test_an_end_id_comes_only_where_the_grammar_may_end(tiny):
    path, tok = tiny
    prompt = tok.encode("Name an animal:")
    push_end = {t: 50.0 for t in tok.eos_ids}  # the end ids win wherever they are allowed
    free, guided = run(engine(path), [prompt] * 2, [params(tok, None, logit_bias=push_end),
                                                   params(tok, Guide("regex", "[a-z]{3,8}"), logit_bias=push_end)])
    assert free == ([], "stop")
    text = tok.decode(guided[0])
    assert guided[1] == "stop" and re.fullmatch("[a-z]{3,8}", text)
    assert len(guided[0]) == 1 or len(tok.decode(guided[0][:-1])) < 3  # ended at the first point it could


def test_unconstrained_rows_get_the_tokens_they_get_alone(tiny):
    path, tok = tiny
    prompts = [tok.encode(text) for text in ("Hello there", "Tell me a story", "1, 2, 3,", "Colours:", "Pets:")]
    plain = [params(tok, None, max_tokens=16), params(tok, None, max_tokens=16, temperature=0.8, seed=3),
             params(tok, None, max_tokens=16)]
    guided = [params(tok, schema_guide()), params(tok, Guide("regex", REGEX))]
    alone = [run(engine(path), [p], [sp])[0] for p, sp in zip(prompts, plain + guided)]
    order = [3, 0, 4, 1, 2]  # guided rows between the plain ones
    mixed = run(engine(path, max_num_seqs=8), [prompts[i] for i in order], [(plain + guided)[i] for i in order])
    assert [mixed[order.index(i)] for i in range(5)] == alone


def test_preempted_constrained_sequences_stay_valid(tiny):
    path, tok = tiny
    prompts = [tok.encode(f"Object number {i}:") for i in range(6)]
    ps = [params(tok, schema_guide()) for _ in prompts]
    roomy = run(engine(path, block_size=4), prompts, ps)
    tight = engine(path, block_size=4, num_kv_blocks=40, max_num_batched_tokens=64)  # 160 slots for 6 sequences
    together = run(tight, prompts, ps)
    assert tight.stats().num_preemptions > 0
    assert together == roomy
    for out, reason in together:
        assert reason == "stop"
        jsonschema.validate(json.loads(tok.decode(out)), SCHEMA)


@pytest.mark.parametrize("guide, field, words", [
    (("json_schema", '{"type": "object", "properties": '), "guided_decoding_guide", "JSON schema"),
    (("json_schema", '{"type": "frobnicate"}'), "guided_decoding_guide", "frobnicate"),
    (("regex", "(cat|dog"), "guided_decoding_guide", "regular expression"),
    (("ebnf_grammar", "root ::= missing_rule"), "guided_decoding_guide", "missing_rule"),
    (("structural_tag", "not json"), "guided_decoding_guide", "structural tag"),
    (("structural_tag", '{"structures": [{"begin": "<a>"}], "triggers": ["<a>"]}'), "guided_decoding_guide",
     '"schema"'),
    (("regex", ""), "guided_decoding_guide", "empty"),
    (("xml", "<a/>"), "guided_decoding_guide_type", "json_schema"),
])
def test_bad_guides_are_request_errors_naming_the_field(tiny, guide, field, words):
    path, tok = tiny
    bg = BackgroundEngine(engine(path))
    try:
        prompt = tok.encode("Hi")
        with pytest.raises(InvalidRequestError) as err:
            bg.submit("bad", prompt, params(tok, Guide(*guide)))
        assert err.value.field == field and words in str(err.value), str(err.value)
        tokens, final = bg.submit("good", prompt, params(tok, Guide("regex", REGEX))).result(timeout=120)
        assert final.finish_reason == "stop" and re.fullmatch(REGEX, tok.decode(tokens))
    finally:
        bg.shutdown()


@pytest.mark.parametrize("form", ["tensorrt_llm", "xgrammar"])
def test_structural_tags_constrain_only_what_follows_a_trigger(form):
    from qwen_triton.chat import QwenTiktokenTokenizer
    from qwen_triton.guided import GuidedDecoding

    tok = QwenTiktokenTokenizer()
    args = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    if form == "tensorrt_llm":  # TensorRT-LLM's {"structures", "triggers"}
        spec = {"structures": [{"begin": "<tool_call>", "schema": args, "end": "</tool_call>"}],
                "triggers": ["<tool_call>"]}
    else:
        spec = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<tool_call>"], "tags": [
            {"type": "tag", "begin": "<tool_call>", "content": {"type": "json_schema", "json_schema": args},
             "end": "</tool_call>"}]}}
    guided = GuidedDecoding(lambda: tok, 151936)

    def fits(text: str) -> bool:
        state = guided.start(Guide("structural_tag", json.dumps(spec)), tok.eos_ids)
        return all(state.accept(t) for t in tok.encode(text))

    assert fits('Any text first. <tool_call>{"city": "Paris"}</tool_call> and after')
    assert not fits('Any text first. <tool_call>{"town": 1}')


def test_min_tokens_cannot_be_combined_with_a_guide():
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(min_tokens=2, guided_decoding=Guide("json"))
    assert err.value.field == "min_tokens"


def test_an_aborted_request_frees_its_matcher(tiny):
    path, tok = tiny
    eng = engine(path)
    eng.add_request("a", tok.encode("Hi"), params(tok, Guide("json")))
    eng.step()
    grammar = weakref.ref(eng.scheduler.requests["a"].grammar)
    assert eng.abort_request("a")
    (out,) = eng.step()
    assert out.finish_reason == "abort"
    gc.collect()
    assert grammar() is None


def test_the_mask_touches_only_the_rows_it_lists():
    vocab = 70
    logits = torch.randn(3, vocab)
    bitmask = torch.zeros(3, 3, dtype=torch.int32)  # [rows, ceil(70 / 32)]: nothing allowed ...
    bitmask[1, 0] = 1 << 5  # ... but token 5 in row 1
    masked = logits.clone()
    apply_token_mask_(masked, TokenMask(bitmask, [1]))
    assert torch.equal(masked[[0, 2]], logits[[0, 2]])
    assert masked[1, 5] == logits[1, 5] and torch.isinf(masked[1]).sum() == vocab - 1
    rows = [SamplingRow(SamplingParams(temperature=0.0), 0, [1], []) for _ in range(3)]
    raw = logits.clone()
    tokens = Sampler()(logits, rows, TokenMask(bitmask, [1]))
    assert torch.equal(logits, masked)  # in place, on the listed row only
    assert [t.token_id for t in tokens] == [int(raw[0].argmax()), 5, int(raw[2].argmax())]


# -- the real Qwen2.5-Coder-0.5B-Instruct --------------------------------------------------------------------

@pytest.mark.slow
def test_real_qwen_json_schema_json_object_and_regex(real_qwen):
    tok = load_tokenizer(real_qwen)
    person = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}

    def chat(text: str) -> list[int]:
        return render_prompt(tok, parse_messages([{"role": "user", "content": text}]))

    prompts = [chat("Give me a person named Ann, aged 30, as JSON."), chat("List three colours as JSON."),
               chat("Write a US phone number."), chat("Say hello.")]
    ps = [params(tok, Guide("json_schema", json.dumps(person)), max_tokens=40),
          params(tok, Guide("json"), max_tokens=40),
          params(tok, Guide("regex", r"\(\d{3}\) \d{3}-\d{4}"), max_tokens=20), params(tok, None, max_tokens=12)]
    eng = engine(str(real_qwen), max_num_seqs=4)
    (person_out, r1), (colours, r2), (phone, r3), plain = run(eng, prompts, ps)
    assert (r1, r2, r3) == ("stop", "stop", "stop")
    jsonschema.validate(json.loads(tok.decode(person_out)), person)
    assert isinstance(json.loads(tok.decode(colours)), (dict, list))
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", tok.decode(phone))
    assert plain == run(engine(str(real_qwen)), prompts[3:], ps[3:])[0]

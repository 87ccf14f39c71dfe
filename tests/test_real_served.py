"""The real default model (Qwen2.5-Coder-0.5B-Instruct) through the served stack: the real build, the
real tritonserver, the `ensemble` and `tensorrt_llm_bls`, every reply equal to our engine's own greedy
reply computed in this process, over HTTP (generate and SSE) and gRPC streaming."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from served import grpc_stream, http_generate, http_stream, needs_triton

from qwen_triton import EngineConfig, LLMEngine, SamplingParams
from qwen_triton.chat import load_tokenizer
from qwen_triton.serving import contract as c
from qwen_triton.serving.preprocess import Preprocessor, PreprocessRequest

pytestmark = [pytest.mark.server, pytest.mark.slow, needs_triton]
MAX_TOKENS = 32
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
REQUESTS = {  # name -> (text_input, messages)
    "text": (f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n用两句话介绍一下长城。<|im_end|>\n"
             "<|im_start|>assistant\n", None),
    "messages": (None, json.dumps([{"role": "user", "content": "Write a haiku about autumn leaves."}])),
    "messages-zh": (None, json.dumps([{"role": "system", "content": "你是一个乐于助人的助手。"},
                                      {"role": "user", "content": "北京有哪些著名的景点？"}], ensure_ascii=False)),
}


@pytest.fixture(scope="module")
def real_server(openai_served):
    """tritonserver of the session's served real default model (conftest.openai_served)."""
    return openai_served.supervisor.server


@pytest.fixture(scope="module")
def expected(real_qwen):
    """Our engine's greedy reply to each request, decoded as postprocessing does."""
    tokenizer = load_tokenizer(real_qwen)
    pre = Preprocessor(tokenizer)
    # a context of 1024 tokens (the served build's prompt window) holds these: a KV pool of MBs, not GBs
    engine = LLMEngine(str(real_qwen), EngineConfig(device="cpu", dtype="float32", max_num_seqs=4,
                                                    max_model_len=1024))
    prompts = [pre(PreprocessRequest(text=t, messages=m, output_len=MAX_TOKENS)).input_ids
               for t, m in REQUESTS.values()]
    outs = engine.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0,
                                                   end_ids=tokenizer.eos_ids))
    return {name: tokenizer.decode(ids) for name, ids in zip(REQUESTS, outs)}


def _body(name: str) -> dict:
    text, messages = REQUESTS[name]
    body = {c.MAX_TOKENS: MAX_TOKENS}
    # a raw text reply leaves its prompt out only when asked (upstream's default echoes it when not streaming)
    body.update({c.TEXT_INPUT: text, c.EXCLUDE_INPUT_IN_OUTPUT: True} if text is not None else {c.MESSAGES: messages})
    return body


def _generate(server, model: str, name: str) -> str:
    r = http_generate(server, _body(name), model=model)
    assert r.status_code == 200, r.text
    return r.json()[c.TEXT_OUTPUT]


def _sse_chunks(server, model: str, name: str) -> list[str]:
    return [e[c.TEXT_OUTPUT] for e in http_stream(server, _body(name), model=model) if c.TEXT_OUTPUT in e]


def _grpc_chunks(server, model: str, name: str) -> list[str]:
    text, messages = REQUESTS[name]
    return grpc_stream(server, text=text, messages=messages, max_tokens=MAX_TOKENS, model=model)


@pytest.mark.parametrize("model", [c.ENSEMBLE, c.BLS])
def test_real_replies_equal_the_engine_over_every_protocol(real_server, expected, model):
    with ThreadPoolExecutor(12) as pool:  # all at once: they share the engine's steps
        unary = {n: pool.submit(_generate, real_server, model, n) for n in REQUESTS}
        sse = {n: pool.submit(_sse_chunks, real_server, model, n) for n in REQUESTS}
        grpc = {n: pool.submit(_grpc_chunks, real_server, model, n) for n in REQUESTS}
        results = {n: (unary[n].result(), sse[n].result(), grpc[n].result()) for n in REQUESTS}
    for name, (text, sse_chunks, grpc_chunks) in results.items():
        assert len(expected[name]) > 10, expected[name]  # a real answer
        assert text == expected[name], name
        assert "".join(sse_chunks) == expected[name], name
        assert "".join(grpc_chunks) == expected[name], name
        if name != "messages":  # Chinese: no chunk splits a character
            assert len(sse_chunks) > 1 and not any("\ufffd" in ch for ch in sse_chunks + grpc_chunks), name

"""End to end: the real build step, the real tritonserver, the real ensemble, on the CPU.

Texts are checked against our engine run in this process on the same checkpoint
(greedy), never against stored strings.
"""
from __future__ import annotations

import json
import queue
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from reference_chatml import HISTORY, SCRIPTED_REPLY, as_messages, reference_encoder, reference_make_context
from scripted_checkpoint import write_scripted_qwen2
from served import (
    RANDOM_MAX_OUTPUT_LEN,
    build_repo,
    grpc_stream,
    http_generate,
    http_stream,
    needs_triton,
    scrape,
    serve,
)

from qwen_triton import EngineConfig
from qwen_triton.serving import contract as c
from qwen_triton.serving.engine_service import EngineService
from qwen_triton.serving.postprocess import Postprocessor
from qwen_triton.serving.preprocess import Preprocessor, preprocess_arrays

pytestmark = [pytest.mark.server, needs_triton]
MAX_TOKENS = 24
PROMPTS = [f"Request {i}: 你好，请写一首关于第{i}号的诗。" for i in range(16)]


@pytest.fixture(scope="module")
def server(random_served):
    """The session's random-weight model server (conftest.random_served: served.RANDOM_SETS)."""
    return random_served.server


@pytest.fixture(scope="module")
def expected_texts(random_checkpoint):
    """Our engine's own greedy replies to PROMPTS (prompt excluded), computed in this process."""
    ckpt = str(random_checkpoint)
    pre, post = Preprocessor.from_dir(ckpt), Postprocessor.from_dir(ckpt)
    svc = EngineService(ckpt, EngineConfig(device="cpu", dtype="float32"))
    try:
        texts = []
        for i, prompt in enumerate(PROMPTS):
            arrays = preprocess_arrays(pre, {c.PRE_QUERY: np.array([[prompt.encode()]], dtype=object),
                                             c.PRE_REQUEST_OUTPUT_LEN: np.array([[MAX_TOKENS]], np.int32)})
            inputs = {c.IN_INPUT_IDS: arrays[c.PRE_INPUT_ID], c.IN_INPUT_LENGTHS: arrays[c.PRE_REQUEST_INPUT_LEN][:, 0],
                      c.IN_REQUEST_OUTPUT_LEN: arrays[c.PRE_OUT_REQUEST_OUTPUT_LEN][:, 0],
                      c.IN_END_ID: arrays[c.PRE_OUT_END_ID][:, 0], c.IN_STOP_WORDS: arrays[c.PRE_STOP_WORDS_IDS],
                      c.IN_TEMPERATURE: np.array([0.0], np.float32), c.IN_EXCLUDE_INPUT: np.array([True])}
            done: queue.Queue = queue.Queue()
            svc.submit(f"x{i}", inputs, done.put)
            resp = done.get(timeout=60)
            texts.append(post.decode(resp.arrays[c.OUT_OUTPUT_IDS][0, 0].tolist()))
        return texts
    finally:
        svc.shutdown()


def test_concurrent_http_and_grpc_match_engine_and_batch_inflight(server, expected_texts):
    before = scrape(server, c.METRIC_ENGINE)

    def one_http(i):
        r = http_generate(server, {"text_input": PROMPTS[i], "max_tokens": MAX_TOKENS, "temperature": 0.0})
        assert r.status_code == 200, r.text
        text = r.json()[c.TEXT_OUTPUT]
        assert text.startswith(PROMPTS[i])  # as upstream: a reply that is not streamed echoes its prompt
        return text[len(PROMPTS[i]):]

    def one_grpc(i):
        return "".join(grpc_stream(server, text=PROMPTS[i]))

    with ThreadPoolExecutor(32) as pool:
        http_texts = list(pool.map(one_http, range(16)))
        grpc_futures = [pool.submit(one_grpc, i) for i in range(16)]
        grpc_texts = [f.result() for f in grpc_futures]
    assert http_texts == expected_texts
    assert grpc_texts == expected_texts
    time.sleep(0.5)  # the engine model exports its gauges every 100 ms
    after = scrape(server, c.METRIC_ENGINE)
    assert after["max_batch_seen"] >= 4, after  # requests shared engine steps (inflight batching)
    generated = after["generated_tokens"] - before.get("generated_tokens", 0)
    # the same of these requests alone, whatever the shared server served before: 2+ tokens a step on average
    assert generated > 2 * (after["steps"] - before.get("steps", 0)) > 0, (before, after)


def test_bls_inputs_the_config_reshapes_reach_the_engine(server):
    """tensorrt_llm_bls declares num_return_sequences and return_log_probs with upstream's `reshape: [ ]`:
    the model sees them as [batch], and the BLS call must send [batch, 1] again (tensorrtllm_backend
    v0.14.0's end_to_end_grpc_client sends num_return_sequences; it failed with "Expected [-1,1], got [1]")."""
    inputs = {c.TEXT_INPUT: np.array([[b"Hello, my name is"]], dtype=object),
              c.MAX_TOKENS: np.array([[4]], np.int32), c.STREAM: np.array([[True]]),
              c.TEMPERATURE: np.array([[0.0]], np.float32), c.NUM_RETURN_SEQUENCES: np.array([[1]], np.int32),
              c.RETURN_LOG_PROBS: np.array([[True]])}
    chunks = grpc_stream(server, model=c.BLS, inputs=inputs, output=c.OUTPUT_LOG_PROBS)
    assert len(chunks) == 4  # one log prob per token


def test_chat_messages_are_original_qwen_chatml(server):
    import tritonclient.http as httpclient

    system = "你是一个乐于助人的助手。"
    msgs = json.dumps([{"role": m.role, "content": m.content}
                       for m in as_messages(system, HISTORY, "再讲一个笑话 🙂")])
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    inputs = []
    for name, arr in ((c.PRE_MESSAGES, np.array([[msgs.encode()]], dtype=object)),
                      (c.PRE_REQUEST_OUTPUT_LEN, np.array([[8]], dtype=np.int32))):
        t = httpclient.InferInput(name, list(arr.shape), "BYTES" if arr.dtype == object else "INT32")
        t.set_data_from_numpy(arr)
        inputs.append(t)
    ids = client.infer(c.PREPROCESSING, inputs).as_numpy(c.PRE_INPUT_ID)[0].tolist()
    assert ids == reference_make_context(reference_encoder(), "再讲一个笑话 🙂", HISTORY, system, 6144)


@pytest.mark.parametrize("body, message", [
    ({"max_tokens": 8}, "text_input"),
    ({"text_input": "hi", "max_tokens": -5}, "max_tokens"),
    ({"text_input": "hi", "max_tokens": 100000}, "max_tokens"),
    ({"text_input": "hi", "max_tokens": RANDOM_MAX_OUTPUT_LEN + 1}, f"max_output_len={RANDOM_MAX_OUTPUT_LEN}"),
    ({"messages": "[{\"role\": \"user\"", "max_tokens": 8}, "messages"),
    ({"messages": "[{\"role\": \"robot\", \"content\": \"x\"}]", "max_tokens": 8}, "messages"),
    ({"text_input": "hi", "max_tokens": 8, "temperature": -1.0}, "temperature"),
    ({"text_input": "hi", "max_tokens": 8, "top_p": 1.5}, "top_p"),
    ({"text_input": "hi", "max_tokens": 8, "beam_width": 4}, "beam_width"),
    ({"text_input": "hi", "max_tokens": 8, c.GUIDE_TYPE: "regex", c.GUIDE: "(a"}, c.GUIDE),
    ({"text_input": "hi", "max_tokens": 8, c.GUIDE_TYPE: "yaml", c.GUIDE: "a: 1"}, c.GUIDE_TYPE),
])
def test_bad_requests_get_clear_errors_and_server_stays_healthy(server, body, message):
    r = http_generate(server, body)
    assert r.status_code == 400 and message in r.json()["error"], r.text  # 400: Triton's INVALID_ARG
    assert requests.get(f"{server.http_url}/v2/health/ready", timeout=5).status_code == 200
    ok = http_generate(server, {"text_input": "still there?", "max_tokens": 4, "temperature": 0.0})
    assert ok.status_code == 200 and c.TEXT_OUTPUT in ok.json()


# bounded values: the random-weight model would fill a free string or number until max_tokens
GUIDED_SCHEMA = {"type": "object", "properties": {"color": {"enum": ["red", "green"]}, "ok": {"type": "boolean"}},
                 "required": ["color", "ok"], "additionalProperties": False}


def test_guided_decoding_through_the_engine_model_and_the_entry_points(server, random_checkpoint):
    """tensorrtllm_backend's guided_decoding_guide_type / guided_decoding_guide: the reply follows the schema
    through tensorrt_llm (token ids over gRPC), ensemble and tensorrt_llm_bls (text over HTTP)."""
    import jsonschema

    from qwen_triton.chat import load_tokenizer

    tok = load_tokenizer(random_checkpoint)
    schema = json.dumps(GUIDED_SCHEMA)
    inputs = {**engine_direct_inputs(200), c.IN_MIN_LENGTH: np.array([[0]], np.int32),
              c.IN_EXCLUDE_INPUT: np.array([[True]]), c.GUIDE_TYPE: np.array([[b"json_schema"]], dtype=object),
              c.GUIDE: np.array([[schema.encode()]], dtype=object)}
    ids = grpc_stream(server, model=c.ENGINE, inputs=inputs, output=c.OUT_OUTPUT_IDS)
    replies = [tok.decode(ids)]
    for model in (c.ENSEMBLE, c.BLS):
        r = http_generate(server, {"text_input": "The sky as JSON:", "max_tokens": 200, "temperature": 0.0,
                                   c.EXCLUDE_INPUT_IN_OUTPUT: True, c.GUIDE_TYPE: "json_schema", c.GUIDE: schema},
                          model=model)
        assert r.status_code == 200, r.text
        replies.append(r.json()[c.TEXT_OUTPUT])
    for reply in replies:
        jsonschema.validate(json.loads(reply), GUIDED_SCHEMA)


def wait_idle(server, timeout: float = 5.0) -> tuple[dict, float]:
    deadline = time.time() + timeout
    while True:
        kv, active = scrape(server, c.METRIC_KV_BLOCKS), scrape(server, c.METRIC_REQUESTS)["active"]
        if (kv["free"] == kv["max"] and active == 0) or time.time() > deadline:
            return kv, active
        time.sleep(0.1)


def engine_direct_inputs(max_tokens: int) -> dict:
    return {c.IN_INPUT_IDS: np.array([[9707, 11, 1879]], np.int32), c.IN_INPUT_LENGTHS: np.array([[3]], np.int32),
            c.IN_REQUEST_OUTPUT_LEN: np.array([[max_tokens]], np.int32), c.IN_STREAMING: np.array([[True]]),
            c.IN_MIN_LENGTH: np.array([[max_tokens]], np.int32), c.IN_TEMPERATURE: np.array([[0.0]], np.float32)}


@pytest.mark.parametrize("model", [c.ENSEMBLE, c.BLS, c.ENGINE])
def test_cancel_midstream_frees_blocks_at_once_and_server_keeps_serving(server, model):
    """A cancelled gRPC stream stops the engine long before max_tokens: blocks back in the pool at once."""
    max_tokens = 2000
    before = scrape(server, c.METRIC_ENGINE)["generated_tokens"]
    if model != c.ENGINE:
        inputs = {c.TEXT_INPUT: np.array([[b"tell me a long story"]], dtype=object),
                  c.MAX_TOKENS: np.array([[max_tokens]], np.int32), c.MIN_LENGTH: np.array([[max_tokens]], np.int32),
                  c.STREAM: np.array([[True]]), c.TEMPERATURE: np.array([[0.0]], np.float32)}
        chunks = grpc_stream(server, model=model, inputs=inputs, cancel_after=3)
    else:
        chunks = grpc_stream(server, model=model, inputs=engine_direct_inputs(max_tokens), cancel_after=3,
                             output=c.OUT_OUTPUT_IDS)
    assert len(chunks) >= 3
    kv, active = wait_idle(server)
    assert kv["free"] == kv["max"] and active == 0, (kv, active)
    generated = scrape(server, c.METRIC_ENGINE)["generated_tokens"] - before
    assert generated < max_tokens / 2, generated  # stopped early, not run to the end
    ok = http_generate(server, {"text_input": "after cancel", "max_tokens": 4, "temperature": 0.0})
    assert ok.status_code == 200


@pytest.mark.parametrize("model", [c.ENSEMBLE, c.BLS])
def test_closing_an_sse_stream_stops_the_engine(server, model):
    """A client that drops its HTTP /generate_stream connection cancels the request: the entry model
    stops the engine at once, the blocks return, nothing generates on to max_tokens."""
    max_tokens = 2000
    before = scrape(server, c.METRIC_ENGINE)["generated_tokens"]
    body = {"text_input": "tell me a long story", "max_tokens": max_tokens, "min_length": max_tokens,
            "temperature": 0.0, "stream": True}
    r = requests.post(f"{server.http_url}/v2/models/{model}/generate_stream", json=body, stream=True, timeout=60)
    events = 0
    for line in r.iter_lines():
        events += line.startswith(b"data: ")
        if events >= 3:
            break
    r.close()
    kv, active = wait_idle(server)
    assert kv["free"] == kv["max"] and active == 0, (kv, active)
    assert scrape(server, c.METRIC_ENGINE)["generated_tokens"] - before < max_tokens / 2


@pytest.fixture(scope="module")
def scripted_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("scripted")
    ckpt = root / "ckpt"
    write_scripted_qwen2(str(ckpt), SCRIPTED_REPLY)
    repo = build_repo(root, model=str(ckpt), sets=("max_num_seqs=4", "max_output_len=64", "max_input_len=256"))
    with serve(repo, root / "triton.log") as srv:
        yield srv


def test_streamed_chinese_and_emoji_never_split(scripted_server):
    messages = json.dumps([{"role": "user", "content": "说点什么"}])
    full = http_generate(scripted_server, {"messages": messages, "max_tokens": 64, "temperature": 0.0})
    assert full.status_code == 200
    assert full.json()[c.TEXT_OUTPUT] == SCRIPTED_REPLY
    events = http_stream(scripted_server, {"messages": messages, "max_tokens": 64, "temperature": 0.0})
    sse_chunks = [e[c.TEXT_OUTPUT] for e in events if c.TEXT_OUTPUT in e]
    grpc_chunks = grpc_stream(scripted_server, messages=messages, max_tokens=64)
    for chunks in (sse_chunks, grpc_chunks):
        assert not any("\ufffd" in ch for ch in chunks), chunks
        assert "".join(chunks) == SCRIPTED_REPLY
        assert len([ch for ch in chunks if ch]) >= 15  # streamed token by token, in whole characters

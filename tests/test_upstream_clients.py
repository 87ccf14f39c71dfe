"""The stack driven the way tensorrtllm_backend v0.19.0's own client scripts drive it: the same inputs,
shapes, dtypes and defaults (inflight_batcher_llm/client/end_to_end_grpc_client.py and
inflight_batcher_llm_client.py, tools/inflight_batcher_llm/end_to_end_test.py and benchmark_core_model.py,
the README's generate bodies). The scripts themselves run against us with tools/upstream_clients.py;
these tests rebuild their requests so CI checks the same contract without their checkout.

A streaming (decoupled, the default) server and a unary one (decoupled=false) serve the random-weight Qwen2;
replies are checked against our engine's own greedy output for the same ids.
"""
from __future__ import annotations

import queue
import time

import numpy as np
import pytest
import requests
from served import build_repo, needs_triton, scrape_series, serve

from qwen_triton import EngineConfig
from qwen_triton.serving import contract as c
from qwen_triton.serving.engine_service import EngineService

pytestmark = [pytest.mark.server, needs_triton]
UNARY_SETS = ("max_num_seqs=16", "max_output_len=256", "max_input_len=512", "decoupled=false")
PROMPTS = ["This is a test", "I want you to", "The cat is"]
OUTPUT_LEN = 10


@pytest.fixture(scope="module")
def streaming(random_served):
    """The session's random-weight model server (conftest.random_served): decoupled, the default."""
    return random_served.server


@pytest.fixture(scope="module")
def unary(random_checkpoint, tmp_path_factory):
    """The same checkpoint built with decoupled=false and served on its own."""
    root = tmp_path_factory.mktemp("upstream-unary")
    repo = build_repo(root, sets=UNARY_SETS, artifacts=random_checkpoint.parent)
    with serve(repo, root / "unary.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def engine(random_checkpoint):
    """Our engine in this process, on the served checkpoint: the reference for every reply."""
    svc = EngineService(str(random_checkpoint), EngineConfig(device="cpu", dtype="float32"))
    yield svc
    svc.shutdown()


def greedy_ids(engine: EngineService, prompt_ids: list[int], n: int, end_id: int | None = None) -> list[int]:
    done: queue.Queue = queue.Queue()
    inputs = {c.IN_INPUT_IDS: np.array([prompt_ids], np.int32), c.IN_INPUT_LENGTHS: np.array([len(prompt_ids)]),
              c.IN_REQUEST_OUTPUT_LEN: np.array([n], np.int32), c.IN_TOP_K: np.array([1], np.int32),
              c.IN_EXCLUDE_INPUT: np.array([True])}
    if end_id is not None:
        inputs[c.IN_END_ID] = np.array([end_id], np.int32)
    engine.submit(f"ref-{time.monotonic_ns()}", inputs, done.put)
    return done.get(timeout=60).arrays[c.OUT_OUTPUT_IDS][0, 0].tolist()


def text_reply(engine: EngineService, prompt: str, n: int = OUTPUT_LEN) -> str:
    tok = engine.tokenizer
    return tok.decode(greedy_ids(engine, tok.encode(prompt, allow_special=True), n))


def tensor(module, name: str, arr: np.ndarray):
    from tritonclient.utils import np_to_triton_dtype

    t = module.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    t.set_data_from_numpy(arr)
    return t


def stream_results(url: str, model: str, requests_: list[tuple[dict, str]]) -> list:
    """Send each (inputs, request_id) on one gRPC stream, close it as the scripts do (stop_stream waits
    for the server), and return every result or error that came back."""
    import tritonclient.grpc as grpcclient

    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: got.put(error or result))
    for inputs, request_id in requests_:
        client.async_stream_infer(model, [tensor(grpcclient, k, v) for k, v in inputs.items()], request_id=request_id)
    client.stop_stream()
    client.close()
    return [got.get_nowait() for _ in range(got.qsize())]


# -- end_to_end_grpc_client.py: the ensemble over a gRPC stream -----------------------------------------

def e2e_inputs(prompt: str, streaming: bool, exclude: bool = False) -> dict:
    """end_to_end_grpc_client.prepare_inputs with its defaults (temperature 1.0, beam 1, no top_k/top_p)."""
    return {"text_input": np.array([[prompt]]).astype(object), "max_tokens": np.ones((1, 1), np.int32) * OUTPUT_LEN,
            "stream": np.array([[streaming]], dtype=bool), "beam_width": np.array([[1]], dtype=np.int32),
            "temperature": np.array([[1.0]], dtype=np.float32),
            "exclude_input_in_output": np.array([[exclude]], dtype=bool)}


@pytest.mark.parametrize("model", [c.ENSEMBLE, c.BLS])
def test_end_to_end_grpc_client_default_and_streaming(streaming, engine, model):
    prompt = PROMPTS[0]
    (result,) = stream_results(streaming.grpc_url, model, [(e2e_inputs(prompt, False), "")])
    assert result.as_numpy("text_output")[0].decode() == prompt + text_reply(engine, prompt)  # prompt echoed
    results = stream_results(streaming.grpc_url, model, [(e2e_inputs(prompt, True), "")])
    assert "".join(r.as_numpy("text_output")[0].decode() for r in results) == text_reply(engine, prompt)
    assert all(r.as_numpy("batch_index") is None for r in results)  # a batch of one: no index, as upstream


def test_end_to_end_grpc_client_batch_inputs(streaming, engine):
    """--batch-inputs: one request of three prompts; one response per prompt, told apart by batch_index."""
    rows = [e2e_inputs(p, False) for p in PROMPTS]
    batched = {k: np.concatenate([r[k] for r in rows], axis=0) for k in rows[0]}
    results = stream_results(streaming.grpc_url, c.ENSEMBLE, [(batched, "")])
    texts = {int(r.as_numpy("batch_index")[0][0]): r.as_numpy("text_output")[0].decode() for r in results}
    assert texts == {i: p + text_reply(engine, p) for i, p in enumerate(PROMPTS)}


# -- inflight_batcher_llm_client.py: the engine model itself --------------------------------------------

def ibl_inputs(prompt_ids: list[int], n: int, streaming: bool, end_id: int, **extra) -> dict:
    """inflight_batcher_llm_client.prepare_inputs with its defaults (top_k 1, top_p 0.0, temperature 1)."""
    inputs = {"input_ids": np.array([prompt_ids], np.int32), "input_lengths": np.array([[len(prompt_ids)]], np.int32),
              "request_output_len": np.array([[n]], np.int32), "beam_width": np.array([[1]], np.int32),
              "temperature": np.array([[1.0]], np.float32), "streaming": np.array([[streaming]], dtype=bool),
              "end_id": np.array([[end_id]], np.int32), "pad_id": np.array([[end_id]], np.int32),
              "runtime_top_k": np.array([[1]], np.int32), "runtime_top_p": np.array([[0.0]], np.float32)}
    inputs.update(extra)
    return inputs


def stop_inputs() -> dict:
    """prepare_stop_signals: placeholders and stop=True, under the request id to stop."""
    return {"input_ids": np.empty([1, 1], np.int32), "input_lengths": np.zeros([1, 1], np.int32),
            "request_output_len": np.array([[0]], np.int32), "stop": np.array([[True]], dtype=bool)}


@pytest.fixture(scope="module")
def soyer(engine):
    tok = engine.tokenizer
    return tok.encode("Born in north-east France, Soyer trained as a"), tok.eos_ids[0]


def test_inflight_batcher_llm_client_streaming(streaming, engine, soyer):
    ids, end_id = soyer
    results = stream_results(streaming.grpc_url, c.ENGINE, [(ibl_inputs(ids, 16, True, end_id), "")])
    tokens = [t for r in results for t in r.as_numpy("output_ids")[0][0].tolist()]
    assert tokens == greedy_ids(engine, ids, 16, end_id)  # streamed without the prompt


def test_inflight_batcher_llm_client_streaming_stop(streaming, soyer):
    """--streaming --stop-after-ms 200 --request-id 1: the stop request ends the stream normally."""
    import tritonclient.grpc as grpcclient

    ids, end_id = soyer
    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(streaming.grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    inputs = ibl_inputs(ids, 200, True, end_id, min_length=np.array([[200]], np.int32))
    client.async_stream_infer(c.ENGINE, [tensor(grpcclient, k, v) for k, v in inputs.items()], request_id="1")
    time.sleep(0.3)
    client.async_stream_infer(c.ENGINE, [tensor(grpcclient, k, v) for k, v in stop_inputs().items()],
                              request_id="1", parameters={"Streaming": True})
    client.stop_stream()
    outcomes = [got.get_nowait() for _ in range(got.qsize())]
    assert all(error is None for _, error in outcomes), [e for _, e in outcomes if e]
    tokens = sum(r.as_numpy("output_ids").shape[-1] for r, _ in outcomes if r.as_numpy("output_ids") is not None)
    assert 0 < tokens < 200


def test_inflight_batcher_llm_client_unary_default(unary, engine, soyer):
    """The script's default: non-streaming async_infer on a model that is not decoupled; output ids hold the
    prompt, then the reply; log probs and logits when asked."""
    import tritonclient.grpc as grpcclient

    ids, end_id = soyer
    client = grpcclient.InferenceServerClient(unary.grpc_url)
    extra = {"return_log_probs": np.array([[True]]), "return_context_logits": np.array([[True]]),
             "return_generation_logits": np.array([[True]]), "return_perf_metrics": np.array([[True]])}
    result = client.infer(c.ENGINE, [tensor(grpcclient, k, v) for k, v in ibl_inputs(ids, 4, False, end_id,
                                                                                      **extra).items()])
    reply = greedy_ids(engine, ids, 4, end_id)
    assert result.as_numpy("output_ids")[0][0].tolist() == ids + reply
    assert result.as_numpy("sequence_length")[0][0] == len(ids) + len(reply)
    assert result.as_numpy("output_log_probs").shape == (1, 1, len(reply))
    vocab = engine.engine.engine.model_config.vocab_size
    assert result.as_numpy("context_logits").shape == (1, len(ids), vocab)
    assert result.as_numpy("generation_logits").shape == (1, 1, len(reply), vocab)
    assert result.as_numpy("generation_logits")[0, 0].argmax(-1).tolist() == reply
    assert result.as_numpy("arrival_time_ns")[0][0] <= result.as_numpy("first_token_time_ns")[0][0]
    assert result.as_numpy("kv_cache_alloc_total_blocks")[0][0] > 0


def test_inflight_batcher_llm_client_unary_stop(unary, soyer):
    """--stop-after-ms with --request-id, not streaming: two responses, the request's (cut short) and the
    stop request's (empty)."""
    import tritonclient.grpc as grpcclient

    ids, end_id = soyer
    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(unary.grpc_url)
    inputs = ibl_inputs(ids, 200, False, end_id, min_length=np.array([[200]], np.int32))
    client.async_infer(c.ENGINE, [tensor(grpcclient, k, v) for k, v in inputs.items()], request_id="9",
                       callback=lambda result, error: got.put((result, error)), parameters={"Streaming": False})
    time.sleep(0.3)
    client.async_infer(c.ENGINE, [tensor(grpcclient, k, v) for k, v in stop_inputs().items()], request_id="9",
                       callback=lambda result, error: got.put((result, error)), parameters={"Streaming": False})
    outcomes = [got.get(timeout=60) for _ in range(2)]
    assert all(error is None for _, error in outcomes), outcomes
    ids_out = [r.as_numpy("output_ids") for r, _ in outcomes]
    assert sum(x is None for x in ids_out) == 1  # the stop request's own response is empty
    (cut,) = [x for x in ids_out if x is not None]
    assert len(ids) < cut.shape[-1] < len(ids) + 200


# -- end_to_end_test.py: preprocessing -> tensorrt_llm -> postprocessing, by hand and through the ensemble --

def test_end_to_end_test_models_by_hand_equal_the_ensemble(unary):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(unary.http_url.removeprefix("http://"))
    prompt = "Summarize the following news article: the cat sat on the mat."
    words = np.array([[""]], dtype=object)
    pre = client.infer("preprocessing", [tensor(httpclient, "QUERY", np.array([[prompt]]).astype(object)),
                                         tensor(httpclient, "BAD_WORDS_DICT", words),
                                         tensor(httpclient, "STOP_WORDS_DICT", words),
                                         tensor(httpclient, "REQUEST_OUTPUT_LEN", np.array([[12]], np.int32))])
    engine_in = {"input_ids": pre.as_numpy("INPUT_ID"), "decoder_input_ids": pre.as_numpy("DECODER_INPUT_ID"),
                 "input_lengths": pre.as_numpy("REQUEST_INPUT_LEN"), "request_output_len": pre.as_numpy(
                     "REQUEST_OUTPUT_LEN"), "end_id": pre.as_numpy("OUT_END_ID"), "pad_id": pre.as_numpy("OUT_PAD_ID")}
    out = client.infer(c.ENGINE, [tensor(httpclient, k, v) for k, v in engine_in.items()])
    post = client.infer("postprocessing", [
        tensor(httpclient, "TOKENS_BATCH", out.as_numpy("output_ids").astype(np.int32)),
        tensor(httpclient, "SEQUENCE_LENGTH", out.as_numpy("sequence_length"))]).as_numpy("OUTPUT")
    for model in (c.ENSEMBLE, c.BLS):
        result = client.infer(model, [
            tensor(httpclient, "text_input", np.array([[prompt]]).astype(object)),
            tensor(httpclient, "max_tokens", np.array([[12]], np.int32)),
            tensor(httpclient, "bad_words", words), tensor(httpclient, "stop_words", words)],
            outputs=[httpclient.InferRequestedOutput("text_output")])
        assert post == result.as_numpy("text_output"), model


def test_benchmark_core_model_counts_positive_output_tokens(unary, engine, soyer):
    """benchmark_core_model's defaults (HTTP, tensorrt_llm, no exclude flag): output ids = input + output."""
    import tritonclient.http as httpclient

    ids, _ = soyer
    client = httpclient.InferenceServerClient(unary.http_url.removeprefix("http://"))
    inputs = {"input_ids": np.array([ids], np.int32), "input_lengths": np.array([[len(ids)]], np.int32),
              "request_output_len": np.array([[20]], np.int32), "pad_id": np.array([[0]], np.int32),
              "end_id": np.array([[1]], np.int32)}
    result = client.infer(c.ENGINE, [tensor(httpclient, k, v) for k, v in inputs.items()], request_id="0")
    assert result.get_response()["outputs"][0]["shape"][2] - len(ids) == 20


# -- the README's generate bodies ------------------------------------------------------------------------

def test_generate_endpoints_with_upstream_bodies(streaming, engine):
    body = {"text_input": "What is machine learning?", "max_tokens": OUTPUT_LEN, "bad_words": "", "stop_words": ""}
    r = requests.post(f"{streaming.http_url}/v2/models/ensemble/generate", json=body, timeout=60)
    reply = text_reply(engine, body["text_input"])
    assert r.status_code == 200 and r.json()["text_output"] == body["text_input"] + reply
    r = requests.post(f"{streaming.http_url}/v2/models/ensemble/generate_stream", json={**body, "stream": True},
                      timeout=60)
    chunks = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and len(chunks) > 1


def test_engine_gauges_carry_upstreams_labels(streaming):
    series = scrape_series(streaming, c.METRIC_REQUESTS)
    assert all(dict(k)["model"] == c.ENGINE and dict(k)["version"] == "1" for k in series)
    assert {dict(k)["request_type"] for k in series} == {"active", "max", "scheduled", "context", "waiting"}
    kinds = {dict(k)["kv_cache_block_type"] for k in scrape_series(streaming, c.METRIC_KV_BLOCKS)}
    assert kinds == {"max", "free", "used", "tokens_per", "reused", "fraction"}

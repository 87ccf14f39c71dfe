"""The OpenAI-compatible API's parts that need no Triton: stop strings, the engine call's tensors, the error
format, limits, the API key, CORS, a Triton that cannot be reached (503), and the supervised child
process. The app runs in-process on the real default model's tokenizer (tests/test_openai_api.py serves
it in front of the real stack)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from qwen_triton.chat import load_tokenizer
from qwen_triton.openai_api import ServedModel, ServiceConfig, create_app
from qwen_triton.openai_api.cli import config_from_args, parser
from qwen_triton.openai_api.engine_client import EngineCall, engine_error
from qwen_triton.openai_api.generation import Piece, StopMatcher
from qwen_triton.openai_api.responses import chat_logprobs, completion_logprobs
from qwen_triton.runtime.child import OpenAIService, SupervisedProcess
from qwen_triton.runtime.process import free_port
from qwen_triton.serving import contract as c

MODEL = "test-model"


def _stream(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out, stopped = [], False
    for piece in pieces:
        text, stopped = matcher.push(piece)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(matcher.flush())
    return "".join(out), stopped


@pytest.mark.parametrize("pieces, stops, expected", [
    (["Hello wor", "ld. Bye"], ["world"], ("Hello ", True)),
    (["a", "b", "c", "d"], ["bc", "cd"], ("a", True)),            # the earliest match wins
    (["x\n", "\n", "y"], ["\n\n"], ("x", True)),                  # a stop string split over pieces
    (["ab", "x"], ["abc"], ("abx", False)),                        # a prefix held back, then released
    (["no stop here"], ["zzz"], ("no stop here", False)),
    (["plain"], [], ("plain", False)),
])
def test_stop_strings_are_found_across_pieces_and_never_sent(pieces, stops, expected):
    assert _stream(StopMatcher(stops), pieces) == expected


def test_a_possible_stop_start_is_held_back_until_it_is_not():
    matcher = StopMatcher(["END"])
    assert matcher.push("the E") == ("the ", False)
    assert matcher.push("N") == ("", False)
    assert matcher.push("X") == ("ENX", False)


def test_the_engine_call_is_tensorrtllm_backend_tensors_of_one_row():
    call = EngineCall(prompt=(1, 2, 3), max_tokens=5, temperature=0.5, seed=-1, logit_bias={7: -100.0, 2: 3.0},
                      stop_words=((4, 5), (6,)), logprobs=True, top_logprobs=3, guide=("json", ""))
    arrays = call.arrays()
    assert arrays[c.IN_INPUT_IDS].tolist() == [[1, 2, 3]] and arrays[c.IN_INPUT_IDS].dtype == np.int32
    assert arrays[c.IN_REQUEST_OUTPUT_LEN].tolist() == [[5]] and arrays[c.IN_EXCLUDE_INPUT].tolist() == [[True]]
    assert arrays[c.IN_TEMPERATURE].tolist() == [[0.5]] and arrays[c.IN_TOP_P].tolist() == [[1.0]]  # not greedy
    assert arrays[c.IN_RANDOM_SEED].dtype == np.uint64 and int(arrays[c.IN_RANDOM_SEED][0, 0]) == 2**64 - 1
    bias = arrays[c.IN_EMBEDDING_BIAS]
    assert bias.shape == (1, 8) and bias[0, 7] == -100.0 and bias[0, 2] == 3.0 and bias[0, 0] == 0.0
    assert arrays[c.IN_STOP_WORDS].tolist() == [[[4, 5, 6], [2, 3, -1]]]  # [1, 2, N]: ids, end offsets
    assert arrays[c.IN_RETURN_LOG_PROBS].tolist() == [[True]]
    assert arrays[c.IN_TOP_LOGPROBS].tolist() == [[3]] and arrays[c.IN_TOP_LOGPROBS].dtype == np.int32
    assert arrays["guided_decoding_guide_type"].tolist() == [[b"json"]] and "guided_decoding_guide" not in arrays
    plain = EngineCall(prompt=(1,), max_tokens=1).arrays()
    assert c.IN_TEMPERATURE not in plain and c.IN_TOP_P not in plain  # the checkpoint's defaults apply
    assert c.IN_RETURN_LOG_PROBS not in plain and c.IN_TOP_LOGPROBS not in plain


def test_log_probabilities_take_openai_s_shapes(served_model):
    tok = served_model.tokenizer
    hello, world, bang = (tok.encode(t)[0] for t in ("Hello", " world", "!"))
    pieces = [Piece("Hello world", (hello, world), (-0.25, -1.5),
                    (((hello, -0.25), (bang, -2.0)), ((bang, -1.0), (world, -1.5)))),
              Piece("!", (bang,), (float("-inf"),), (((bang, float("-inf")), (hello, float("-inf"))),))]
    chat = chat_logprobs(tok, pieces).model_dump()["content"]
    assert [(t["token"], t["logprob"], bytes(t["bytes"]).decode()) for t in chat] == [
        ("Hello", -0.25, "Hello"), (" world", -1.5, " world"), ("!", -9999.0, "!")]  # JSON has no -inf
    assert [[(a["token"], a["logprob"]) for a in t["top_logprobs"]] for t in chat] == [
        [("Hello", -0.25), ("!", -2.0)], [("!", -1.0), (" world", -1.5)], [("!", -9999.0), ("Hello", -9999.0)]]
    legacy = completion_logprobs(tok, pieces, offset=3, top=True)
    assert legacy.tokens == ["Hello", " world", "!"] and legacy.text_offset == [3, 8, 14]
    assert legacy.top_logprobs == [{"Hello": -0.25, "!": -2.0}, {"!": -1.0, " world": -1.5},
                                   {"!": -9999.0, "Hello": -9999.0}]
    assert completion_logprobs(tok, pieces).top_logprobs is None  # logprobs 0: the chosen tokens only


@pytest.mark.parametrize("message, status", [
    ("unavailable: the engine process died", 503), ("internal error: boom", 500),
    ("invalid max_tokens: must be >= 1", 400), ("Request for unknown model: 'tensorrt_llm' is not found", 503),
])
def test_engine_errors_keep_their_class(message, status):
    assert engine_error(message).status == status


@pytest.fixture(scope="module")
def served_model(real_qwen) -> ServedModel:
    return ServedModel(name=MODEL, tokenizer=load_tokenizer(real_qwen), default_system="You are helpful.",
                       max_input_len=256, max_output_len=32, max_model_len=288, decoupled=True, created=0)


def _client(served_model, **config) -> TestClient:
    # a port nothing listens on: Triton "down"
    config = ServiceConfig(triton_grpc=f"127.0.0.1:{free_port()}", **config)
    return TestClient(create_app(config, served_model), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(served_model):
    with _client(served_model, max_body_bytes=4096) as c_:
        yield c_


def _chat(**fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize("body, status, param", [
    (_chat(frobnicate=1), 400, "frobnicate"),
    (_chat(n=2), 400, "n"),
    (_chat(temperature=3), 400, "temperature"),
    (_chat(temperature="0.5"), 400, "temperature"),
    (_chat(top_logprobs=3), 400, "top_logprobs"),  # needs logprobs: true
    (_chat(top_logprobs=21, logprobs=True), 400, "top_logprobs"),
    (_chat(max_tokens=33), 400, "max_tokens"),
    (_chat(max_completion_tokens=0), 400, "max_completion_tokens"),
    (_chat(logit_bias={"abc": 1}), 400, "logit_bias"),
    (_chat(logit_bias={"5": 101}), 400, "logit_bias.5"),
    (_chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (_chat(audio={"voice": "x"}), 400, "audio"),
    (_chat(messages=[]), 400, "messages"),
    (_chat(messages=[{"role": "robot", "content": "x"}]), 400, "messages[0]"),
    (_chat(messages=[{"role": "user", "content": "x " * 600}]), 400, "messages"),
    (_chat(model="gpt-4o"), 404, "model"),
    (_chat(tool_choice="required"), 400, "tool_choice"),
    (_chat(tools=[{"type": "function", "function": {"name": "f"}}],
           tool_choice={"type": "function", "function": {"name": "g"}}), 400, "tool_choice"),
    (_chat(tools=[{"type": "function", "function": {"name": "bad name"}}]), 400, "tools[0].function.name"),
    (_chat(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="required",
           response_format={"type": "json_object"}), 400, "response_format"),
    (_chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), 400,
     "response_format.json_schema.schema"),
    (_chat(messages=[{"role": "tool", "content": "42"}]), 400, "messages[0].tool_call_id"),
    (_chat(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]), 400, "messages"),
])
def test_bad_chat_requests_get_openai_errors_naming_the_field(client, body, status, param):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error
    assert error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL, "prompt": "x", "logprobs": 6}, "logprobs"),
    ({"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
    ({"model": MODEL, "prompt": [10**9]}, "prompt"),
    ({"model": MODEL, "prompt": "x", "best_of": 3}, "best_of"),
    ({"model": MODEL, "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": MODEL}, "prompt"),
])
def test_bad_completion_requests_name_the_field(client, body, param):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("data, status", [
    (b"{not json", 400), (b"", 400), (b'{"model": "x", "messages": ' + b"[" * 2000 + b"]" * 2000 + b"}", 400),
    (b"x" * 5000, 413),
])
def test_bodies_that_are_not_requests(client, data, status):
    r = client.post("/v1/chat/completions", content=data, headers={"content-type": "application/json"})
    assert r.status_code == status and "error" in r.json(), r.text


@pytest.mark.parametrize("field, param", [
    ('"messages": [{"role": "user", "content": "\\ud800"}]', "messages[0].content"),
    ('"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": '
     '{"name": "f", "description": "\\udc00"}}]', "tools[0].function.description"),
    ('"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema", '
     '"json_schema": {"name": "x", "schema": {"type": "\\ud800"}}}', "response_format.json_schema.schema.type"),
])
def test_text_that_is_not_utf8_is_refused_by_name(client, field, param):
    """JSON can escape a lone surrogate; no tokenizer, template or grammar may see one (they raise)."""
    body = ('{"model": "%s", %s}' % (MODEL, field)).encode()
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_a_body_over_the_limit_without_its_length_is_413(client):
    r = client.post("/v1/chat/completions", content=iter([b"{" + b" " * 3000, b" " * 3000 + b"}"]),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_unknown_paths_and_methods_answer_in_openai_format(client):
    assert client.get("/v1/nothing").json()["error"]["code"] == "not_found"
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_a_triton_that_cannot_be_reached_is_503(client):
    for stream in (False, True):
        r = client.post("/v1/chat/completions", json=_chat(stream=stream, max_tokens=4))
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error", r.text
    assert client.get("/health").status_code == 503
    assert client.get("/v1/models").json()["data"][0]["id"] == MODEL


def test_the_api_key_is_required_when_set(served_model):
    with _client(served_model, api_key="s3cret") as keyed:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = keyed.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert keyed.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert keyed.get("/openapi.json").status_code == 200  # the document and /health stay open


def test_cors_is_off_unless_origins_are_given(client, served_model):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/chat/completions", headers=preflight).headers
    with _client(served_model, cors_origins=("https://app.example",)) as cors:
        r = cors.options("/v1/chat/completions", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://app.example"


def test_the_cli_reads_the_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_API_KEY", "from-env")
    config = config_from_args(parser().parse_args(["--port", "1234", "--cors-origin", "*"]))
    assert config.api_key == "from-env" and config.port == 1234 and config.cors_origins == ("*",)
    assert config.host == "127.0.0.1"


def test_a_supervised_child_is_restarted_and_stopped(tmp_path):
    child = SupervisedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "x.log")
    child.start()
    first = child.pid
    assert not child.poll()
    child.proc.kill()
    child.proc.wait()
    assert child.poll() and child.pid != first and child.restarts == 1
    child.stop()
    assert child.proc.poll() is not None
    argv = OpenAIService(9000).argv(8001, Path("/repo"))
    assert argv[1:3] == ["-m", "qwen_triton.openai_api"] and "127.0.0.1:8001" in argv and "/repo" in argv


def test_the_runtime_cli_passes_the_openai_port_to_the_background_supervisor():
    from qwen_triton.runtime import cli

    args = cli.parser().parse_args(["start", "--openai-port", str(free_port())])
    argv = cli._start_argv(args)
    assert argv[argv.index("--openai-port") + 1] == str(args.openai_port)
    assert not cli._openai_ready(args)  # nothing listens there: `start` keeps waiting
    plain = cli.parser().parse_args(["start"])
    assert "--openai-port" not in cli._start_argv(plain) and cli._openai_ready(plain)

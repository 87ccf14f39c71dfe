"""clients/: the typed client library (HTTP and gRPC), the CLI and the terminal chat.

Unit tests need no server: request -> tensors mapping, SSE parsing (error events included), the HTTP
client against a scripted in-process HTTP server, TextStream timing, the chat's history.

The ``server`` tests drive tritonserver's own endpoints of the session's served real default model
(conftest.openai_served: built with ``python -m build`` and served on free ports; greedy decoding,
temperature 0, makes its replies deterministic).  They are skipped only when Triton is not installed
(``make triton-install``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from clients import ClientError, GenerateRequest, GrpcClient, HttpClient, ServerError, TextStream, parse_sse
from clients import cli as cli_mod
from clients.chat import Chat
from clients.response import flat_output, texts_of
from clients.triton_client import INPUT_SPECS, REQUEST_FIELDS, RequestStats
from qwen_triton import wire
from qwen_triton.runtime.layout import is_installed
from qwen_triton.serving import contract as c

ROOT = Path(__file__).resolve().parents[1]
TRITON_DIR = Path(os.environ.get("TRITON_DIR", ROOT / ".triton"))
INSTALLED = is_installed(TRITON_DIR)
SERVER_MARKS = [
    pytest.mark.server,
    pytest.mark.skipif(not INSTALLED, reason=f"Triton is not installed in {TRITON_DIR}: run `make triton-install`"),
]


# ------------------------------------------------------------------------------------ request -> tensors
def test_every_supported_ensemble_input_has_exactly_one_request_field():
    names = [name for _, name in REQUEST_FIELDS]
    assert sorted(names) == sorted(spec.name for spec in c.ENSEMBLE_INPUTS if spec.unsupported is None)
    assert len(set(names)) == len(names)


def test_our_option_names_go_on_the_wire_as_upstreams():
    values = GenerateRequest(text="hi", min_tokens=3, seed=11).values()
    assert values[c.MIN_LENGTH] == 3 and values[c.RANDOM_SEED] == 11
    assert (c.MIN_LENGTH, c.RANDOM_SEED) == ("min_length", "random_seed")
    assert "min_tokens" not in values and "seed" not in values


def test_only_fields_that_are_set_are_sent():
    req = GenerateRequest(text="Hello", max_tokens=16)
    # our client asks for the reply only (upstream's default echoes the prompt when not streaming)
    assert req.values() == {c.TEXT_INPUT: "Hello", c.MAX_TOKENS: 16, c.STREAM: False, c.EXCLUDE_INPUT_IN_OUTPUT: True}
    assert req.values(stream=True)[c.STREAM] is True


def test_request_maps_onto_contract_names_and_types():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "讲个笑话 🙂"}]
    req = GenerateRequest(messages=msgs, max_tokens=32, temperature=0.0, top_p=0.9, top_k=5, seed=7,
                          repetition_penalty=1.1, min_tokens=2, stop=["\n\n", "</s>"], bad_words=["x"],
                          end_id=151645, stream=True, exclude_input_in_output=True, return_log_probs=True)
    values = req.values()
    assert json.loads(values[c.MESSAGES]) == msgs
    assert "讲个笑话" in values[c.MESSAGES]  # UTF-8 text, not \\u escapes
    assert c.TEXT_INPUT not in values
    assert values[c.STOP_WORDS] == ["\n\n", "</s>"] and values[c.BAD_WORDS] == ["x"]
    assert values[c.TEMPERATURE] == 0.0 and isinstance(values[c.TEMPERATURE], float)
    assert values[c.RANDOM_SEED] == 7 and values[c.TOP_K] == 5 and values[c.END_ID] == 151645
    assert values[c.MIN_LENGTH] == 2
    assert values[c.STREAM] is True and values[c.RETURN_LOG_PROBS] is True

    arrays = req.to_arrays()
    assert set(arrays) == set(values)
    for name, arr in arrays.items():
        spec = INPUT_SPECS[name]
        assert arr.dtype == np.dtype(wire.NUMPY_DTYPES[spec.dtype]), name
        # every ensemble model is batched: a leading batch dimension of 1
        expected = (1, len(values[name])) if spec.dims == (-1,) else (1, 1)
        assert arr.shape == expected, name
    assert arrays[c.MESSAGES][0, 0].decode("utf-8") == values[c.MESSAGES]
    assert arrays[c.STOP_WORDS].tolist() == [[b"\n\n", b"</s>"]]
    assert arrays[c.RANDOM_SEED].dtype == np.uint64 and arrays[c.TOP_P].dtype == np.float32
    assert req.to_arrays(stream=False, batched=False)[c.STREAM].tolist() == [False]
    assert req.to_json() == values


def test_list_inputs_are_rows_of_the_batch_of_one():
    req = GenerateRequest(text="hi", embedding_bias_words=["a", "b c"], embedding_bias_weights=[0.5, -1],
                          return_perf_metrics=True, stop=[])
    values = req.values()
    assert values[c.EMBEDDING_BIAS_WORDS] == ["a", "b c"] and values[c.EMBEDDING_BIAS_WEIGHTS] == [0.5, -1.0]
    assert values[c.RETURN_PERF_METRICS] is True and c.STOP_WORDS not in values  # empty lists are not sent
    arrays = req.to_arrays()
    assert arrays[c.EMBEDDING_BIAS_WORDS].tolist() == [[b"a", b"b c"]]
    weights = arrays[c.EMBEDDING_BIAS_WEIGHTS]
    assert weights.dtype == np.float32 and weights.shape == (1, 2) and weights.tolist() == [[0.5, -1.0]]


def test_messages_may_be_json_text():
    text = '[{"role": "user", "content": "hi"}]'
    assert GenerateRequest(messages=text).values()[c.MESSAGES] == text


@pytest.mark.parametrize("kwargs, error", [
    ({}, ValueError),
    ({"text": "a", "messages": [{"role": "user", "content": "b"}]}, ValueError),
    ({"text": "a", "stop": "word"}, TypeError),
])
def test_bad_requests_are_refused_before_sending(kwargs, error):
    with pytest.raises(error):
        GenerateRequest(**kwargs)


# ---------------------------------------------------------------------------------------- SSE parsing
def test_sse_events_are_parsed():
    lines = [b": comment\n", b'data: {"text_output": "a"}\n', b"\n",
             b'data: {"text_output":\r\n', b'data: "b\xc3\xa9"}\r\n', b"\r\n",
             b"event: message\n", b'data:{"text_output": "c"}\n']  # no blank line at the end
    assert [e["text_output"] for e in parse_sse(lines)] == ["a", "b\u00e9", "c"]


def test_sse_error_event_raises_server_error_with_the_message():
    lines = ['data: {"text_output": "a"}', "", 'data: {"error": "in ensemble \'ensemble\', boom"}', ""]
    events = parse_sse(lines)
    assert next(events)["text_output"] == "a"
    with pytest.raises(ServerError) as err:
        next(events)
    assert err.value.message == "in ensemble 'ensemble', boom" and err.value.status == 200
    assert list(parse_sse(lines, raise_errors=False))[1] == {"error": "in ensemble 'ensemble', boom"}


def test_malformed_sse_is_a_client_error():
    with pytest.raises(ClientError, match="malformed"):
        list(parse_sse(["data: {not json", ""]))


def test_output_values_are_flattened_like_http():
    assert texts_of([["a", "b"]]) == ["a", "b"] and texts_of(np.array([[b"\xe4\xbd\xa0"]], dtype=object)) == ["你"]
    assert flat_output(np.array([[3]], dtype=np.int32)) == 3
    assert flat_output(np.zeros((1, 1, 3), dtype=np.float32)) == [0.0, 0.0, 0.0]


# -------------------------------------------------------------------------- HTTP against a fake server
class _Scripted(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, body))
        status, ctype, payload = self.server.replies[self.path.rsplit("/", 1)[-1]]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_http():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    srv.seen, srv.replies = [], {}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _sse(*events) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


def test_http_generate_and_stream_against_a_scripted_server(fake_http):
    fake_http.replies["generate"] = (200, "application/json", json.dumps(
        {"model_name": "ensemble", "text_output": "hello", "cum_log_probs": 0.5, "sequence_id": 0}).encode())
    fake_http.replies["generate_stream"] = (200, "text/event-stream", _sse(
        {"text_output": "he"}, {"text_output": ""}, {"text_output": "llo", "cum_log_probs": 0.5}))
    client = HttpClient(f"http://127.0.0.1:{fake_http.server_port}")
    req = GenerateRequest(text="hi", max_tokens=4, temperature=0.0)
    result = client.generate(req)
    assert result.text == "hello" and result.outputs == {c.CUM_LOG_PROBS: 0.5}
    assert fake_http.seen[-1] == (f"/v2/models/{c.ENSEMBLE}/generate",
                                  {c.TEXT_INPUT: "hi", c.MAX_TOKENS: 4, c.TEMPERATURE: 0.0, c.STREAM: False,
                                   c.EXCLUDE_INPUT_IN_OUTPUT: True})
    stream = client.stream(req)
    assert list(stream) == ["he", "llo"]  # empty chunks are skipped
    assert fake_http.seen[-1][1][c.STREAM] is True
    assert stream.text == "hello" and stream.finished and not stream.cancelled
    assert stream.stats.chunks == 2 and stream.stats.responses == 3
    assert 0 <= stream.stats.first_chunk_s <= stream.stats.chunk_s[-1] <= stream.stats.latency_s
    streamed = client.generate(GenerateRequest(text="hi", stream=True))  # accumulated
    assert streamed.text == "hello" and streamed.stats.chunks == 2


def test_http_errors_carry_the_server_message(fake_http):
    client = HttpClient(f"127.0.0.1:{fake_http.server_port}")
    req = GenerateRequest(text="hi")
    # /generate answers 200 with an error in the body when the model yields several responses
    several = b'{"error": "generate expects model to produce exactly 1 response"}'
    fake_http.replies["generate"] = (200, "application/json", several)
    with pytest.raises(ServerError, match="exactly 1 response"):
        client.generate(req)
    fake_http.replies["generate"] = (400, "application/json", b'{"error": "invalid max_tokens: bad"}')
    with pytest.raises(ServerError) as err:
        client.generate(req)
    assert (err.value.message, err.value.status) == ("invalid max_tokens: bad", 400)
    # rejected before the first event: 400 with an SSE error body
    fake_http.replies["generate_stream"] = (400, "text/event-stream", _sse({"error": "invalid text_input"}))
    with pytest.raises(ServerError) as err:
        list(client.stream(req))
    assert (err.value.message, err.value.status) == ("invalid text_input", 400)
    # an error after the first event: a data: error object under 200
    fake_http.replies["generate_stream"] = (200, "text/event-stream",
                                            _sse({"text_output": "a"}, {"error": "engine died"}))
    stream = client.stream(req)
    assert next(stream) == "a"
    with pytest.raises(ServerError, match="engine died"):
        next(stream)
    assert stream.text == "a" and stream.finished


def test_unreachable_server_is_a_client_error():
    assert not HttpClient("127.0.0.1:1", timeout=5).ready()
    with pytest.raises(ClientError, match="cannot reach"):
        HttpClient("127.0.0.1:1").generate(GenerateRequest(text="hi"))
    with pytest.raises(ClientError, match="cannot reach"):
        GrpcClient("127.0.0.1:1", timeout=5).generate(GenerateRequest(text="hi"))


# ------------------------------------------------------------------------------------ TextStream, chat
def _fake_stream(chunks, cancelled=None):
    cancelled = cancelled if cancelled is not None else []
    return TextStream(iter([([t], {}) for t in chunks]), lambda: cancelled.append(True), RequestStats())


def test_text_stream_cancel_and_result():
    calls = []
    stream = _fake_stream(["a", "b", "c"], calls)
    assert next(stream) == "a"
    stream.close()  # early close cancels
    assert calls == [True] and stream.cancelled and stream.finished
    done = _fake_stream(["a", "b"], calls)
    result = done.result()
    assert result.text == "ab" and result.stats.chunks == 2 and not result.cancelled
    done.close()
    assert calls == [True]  # a finished stream is not cancelled


class _FakeClient:
    def __init__(self, fail_on=None):
        self.requests = []
        self.fail_on = fail_on

    def stream(self, req):
        self.requests.append(req)
        n = len(self.requests)
        if n == self.fail_on:
            raise ServerError("boom")
        return _fake_stream([f"reply{n}", "!"])


def test_chat_keeps_history_and_resets():
    import io

    out, err = io.StringIO(), io.StringIO()
    client = _FakeClient(fail_on=2)
    chat = Chat(client, system="sys", out=out, err=err, max_tokens=8, temperature=0.0)
    assert chat.turn("one")
    assert not chat.turn("two")  # failed turn: not kept
    assert chat.turn("three")
    assert json.loads(client.requests[2].messages_json()) == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "one"},
        {"role": "assistant", "content": "reply1!"}, {"role": "user", "content": "three"}]
    assert all(r.stream and r.temperature == 0.0 and r.max_tokens == 8 for r in client.requests)
    chat.reset()
    assert chat.messages("x") == [{"role": "system", "content": "sys"}, {"role": "user", "content": "x"}]
    assert out.getvalue() == "reply1!\nreply3!\n" and "error: boom" in err.getvalue()


def test_cli_arguments():
    args = cli_mod.parse_args(["--protocol", "grpc", "--text", "hi", "--stop", "\\n\\n", "--stop", "end",
                               "--temperature", "0", "--top-k", "3", "--seed", "9"])
    fields = cli_mod.sampling_fields(args)
    assert fields["stop"] == ["\n\n", "end"] and fields["temperature"] == 0.0 and fields["seed"] == 9
    assert cli_mod.connect(args).url == "localhost:8001"
    msgs = cli_mod.parse_args(["--messages-json", '[{"role": "user", "content": "你好"}]'])
    assert msgs.messages == [{"role": "user", "content": "你好"}] and msgs.text is None
    with pytest.raises(SystemExit):
        cli_mod.parse_args(["--messages-json", '{"role": "user"}'])
    with pytest.raises(SystemExit):
        cli_mod.parse_args(["--text", "a", "--prompt-file", "f"])


# ------------------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def server(openai_served):
    """tritonserver of the session's served real default model (conftest.openai_served), driven through its
    own HTTP and gRPC endpoints."""
    return openai_served.supervisor.server


GREEDY = {"max_tokens": 12, "temperature": 0.0}
CHAT = [{"role": "user", "content": "Tell me a joke about 猫 🙂"}]


def _run(*args, stdin=None):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, input=stdin, capture_output=True, text=True,
                          encoding="utf-8", env=env, timeout=60, check=False)


def _active_requests(srv) -> float:
    families = wire.fetch_metrics(srv.metrics_url)
    active = wire.metric_values(families or {}, c.METRIC_REQUESTS, "request_type").get("active")
    assert active is not None, f"no {c.METRIC_REQUESTS} active gauge"
    return active


class TestServer:
    pytestmark = SERVER_MARKS

    @pytest.mark.parametrize("prompt", [{"text": "Hello, world"}, {"messages": CHAT}], ids=["text", "messages"])
    def test_http_and_grpc_generate_and_stream_agree(self, server, prompt):
        http, grpc = HttpClient(server.http_url), GrpcClient(server.grpc_url)
        assert http.ready() and grpc.ready()
        req = GenerateRequest(**prompt, **GREEDY)
        reference = http.generate(req)
        assert reference.text and reference.stats.responses == 1
        assert grpc.generate(req).text == reference.text
        for client in (http, grpc):
            stream = client.stream(req)
            chunks = list(stream)
            assert "".join(chunks) == reference.text, type(client).__name__
            assert len(chunks) > 1 and stream.finished and not stream.cancelled
            assert 0 < stream.stats.first_chunk_s <= stream.stats.latency_s
            assert client.generate(GenerateRequest(**prompt, stream=True, **GREEDY)).text == reference.text

    def test_server_errors_are_raised_verbatim(self, server):
        http, grpc = HttpClient(server.http_url), GrpcClient(server.grpc_url)
        cases = [(GenerateRequest(text="hi", max_tokens=0), "invalid max_tokens"),
                 (GenerateRequest(messages=[{"role": "robot", "content": "x"}]), "unknown role 'robot'")]
        for req, needle in cases:
            for call in (http.generate, grpc.generate, lambda r: list(http.stream(r)),
                         lambda r: list(grpc.stream(r))):
                with pytest.raises(ServerError) as err:
                    call(req)
                assert needle in err.value.message

    def test_cli_prints_the_same_text(self, server):
        expected = HttpClient(server.http_url).generate(GenerateRequest(text="Hello, world", **GREEDY)).text
        common = ["--text", "Hello, world", "--max-tokens", "12", "--temperature", "0"]
        for url, protocol, stream in ((server.http_url, "http", []), (server.grpc_url, "grpc", ["--stream"])):
            proc = _run("clients.cli", "--url", url, "--protocol", protocol, *stream, *common)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout == expected + "\n"
        bad = _run("clients.cli", "--url", server.grpc_url, "--protocol", "grpc", "--text", "hi",
                   "--max-tokens", "0")
        assert bad.returncode == 1 and "invalid max_tokens" in bad.stderr and bad.stdout == ""

    def test_chat_two_turns_through_a_pipe(self, server):
        client = GrpcClient(server.grpc_url)
        system = {"role": "system", "content": "Be brief."}
        first = client.generate(GenerateRequest(messages=[system, {"role": "user", "content": "Hi"}],
                                                **GREEDY)).text
        second = client.generate(GenerateRequest(messages=[
            system, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": first},
            {"role": "user", "content": "And then?"}], **GREEDY)).text
        proc = _run("clients.chat", "--url", server.grpc_url, "--protocol", "grpc", "--system", "Be brief.",
                    "--max-tokens", "12", "--temperature", "0", stdin="Hi\nAnd then?\n")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"{first}\n{second}\n"

    def test_cancel_ends_the_stream(self, server):
        for client in (GrpcClient(server.grpc_url), HttpClient(server.http_url)):
            stream = client.stream(GenerateRequest(text="Hello", max_tokens=64, min_tokens=64, temperature=0.0))
            got = []
            for chunk in stream:
                got.append(chunk)
                if len(got) == 2:
                    stream.cancel()
            assert len(got) == 2 and stream.cancelled and stream.finished

    def test_cancel_through_the_ensemble_frees_the_engine(self, server):
        client = GrpcClient(server.grpc_url)
        # the served build's max_output_len: a reply the CPU takes far longer than the test's 1.5 s to finish
        stream = client.stream(GenerateRequest(text="Hello", max_tokens=256, min_tokens=256, temperature=0.0))
        next(stream)
        client.cancel()
        assert list(stream) == [] and stream.cancelled  # nothing after a cancel, even if buffered
        deadline = time.monotonic() + 1.5
        while _active_requests(server) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _active_requests(server) == 0

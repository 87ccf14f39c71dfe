"""qwen_triton/wire.py: the wire format shared by clients/, loadtest/, tools/ and the tests (no server)."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from qwen_triton import wire
from qwen_triton.serving import contract as c

SPECS = {spec.name: spec for spec in c.ENSEMBLE_INPUTS}


# ------------------------------------------------------------------------------------------------ dtypes
def test_dtype_maps_cover_every_contract_dtype_both_ways():
    used = {spec.dtype for specs in c.MODEL_SPECS.values() for group in specs for spec in group}
    assert used <= set(wire.NUMPY_DTYPES) and set(wire.PYTHON_TYPES) == set(wire.NUMPY_DTYPES)
    for name, numpy_type in wire.NUMPY_DTYPES.items():
        assert wire.triton_dtype(numpy_type) == name
    assert wire.triton_dtype(np.array([b"x"]).dtype) == wire.triton_dtype(np.array(["x"]).dtype) == "BYTES"
    assert wire.triton_dtype(bool) == "BOOL" and wire.triton_dtype(np.dtype("<i4")) == "INT32"
    assert wire.PYTHON_TYPES["BYTES"] is str and wire.PYTHON_TYPES["UINT64"] is int
    assert wire.PYTHON_TYPES["FP16"] is float and wire.PYTHON_TYPES["BOOL"] is bool
    with pytest.raises(ValueError, match="no Triton dtype"):
        wire.triton_dtype(np.complex64)
    with pytest.raises(TypeError):
        wire.NUMPY_DTYPES["X"] = np.int8  # read-only: no module state to change


def test_python_values_follow_the_spec():
    assert wire.python_value(SPECS[c.TEMPERATURE], 1) == 1.0 and isinstance(
        wire.python_value(SPECS[c.TEMPERATURE], 1), float)
    assert wire.python_value(SPECS[c.RANDOM_SEED], np.uint64(7)) == 7
    assert wire.python_value(SPECS[c.STREAM], 1) is True
    assert wire.python_value(SPECS[c.STOP_WORDS], ("a", 3)) == ["a", "3"]
    assert wire.python_value(SPECS[c.EMBEDDING_BIAS_WEIGHTS], [1, 2]) == [1.0, 2.0]


def test_arrays_are_a_batch_of_one():
    seed = wire.to_array(SPECS[c.RANDOM_SEED], 2**63)
    assert seed.dtype == np.uint64 and seed.shape == (1, 1) and seed.tolist() == [[2**63]]
    assert wire.to_array(SPECS[c.MIN_LENGTH], 5).dtype == np.int32
    text = wire.to_array(SPECS[c.TEXT_INPUT], "你好")
    assert text.dtype == object and text.shape == (1, 1) and text[0, 0] == "你好".encode()
    words = wire.to_array(SPECS[c.STOP_WORDS], ["a", b"b", "c c"])
    assert words.shape == (1, 3) and words.tolist() == [[b"a", b"b", b"c c"]]
    weights = wire.to_array(SPECS[c.EMBEDDING_BIAS_WEIGHTS], [0.5, 1])
    assert weights.dtype == np.float32 and weights.shape == (1, 2)
    assert wire.to_array(SPECS[c.STREAM], True, batched=False).tolist() == [True]
    assert wire.to_array(SPECS[c.STOP_WORDS], []).shape == (1, 0)


def test_raw_contents_are_tritons_raw_format():
    assert wire.raw_contents(wire.to_array(SPECS[c.STOP_WORDS], ["ab", "é"])) == (
        struct.pack("<I", 2) + b"ab" + struct.pack("<I", 2) + "é".encode())
    assert wire.raw_contents(wire.to_array(SPECS[c.MAX_TOKENS], 258)) == struct.pack("<i", 258)
    assert wire.raw_contents(np.array([[1.5]], dtype=">f4")) == struct.pack("<f", 1.5)  # little endian
    assert wire.raw_contents(wire.to_array(SPECS[c.STREAM], True)) == b"\x01"


# --------------------------------------------------------------------------------------------------- SSE
def test_sse_events_multi_line_data_comments_and_other_fields():
    lines = [b": a comment\n", b'data: {"text_output": "a"}\n', b"\n",
             b'data: {"text_output":\r\n', b'data: "b\xc3\xa9",\n', b'data:"n": 2}\r\n', b"\r\n",
             b"event: message\n", b"id: 7\n", b"retry: 10\n", b"\n",  # an event with no data is none
             bytearray(b'data: {"text_output": "c"}\n')]  # no blank line at the end; a bytearray line
    assert list(wire.parse_sse(lines)) == [{"text_output": "a"}, {"text_output": "b\u00e9", "n": 2},
                                           {"text_output": "c"}]
    assert list(wire.parse_sse(["data: {}", "", "data", ": x", ""])) == [{}]  # "data" alone is empty data


def test_sse_error_events():
    lines = ['data: {"text_output": "a"}', "", 'data: {"error": "in ensemble \'ensemble\', boom"}', "",
             'data: {"text_output": "never"}', ""]
    assert list(wire.parse_sse(lines))[1] == {"error": "in ensemble 'ensemble', boom"}
    events = wire.parse_sse(lines, raise_errors=True)
    assert next(events) == {"text_output": "a"}
    with pytest.raises(wire.ErrorReply) as err:
        next(events)
    assert err.value.message == "in ensemble 'ensemble', boom"


@pytest.mark.parametrize("lines, match", [
    (["data: {not json", ""], "malformed server-sent event"),
    (["data: [1, 2]", ""], "not a JSON object"),
])
def test_sse_that_is_no_json_object_is_a_wire_error(lines, match):
    with pytest.raises(wire.WireError, match=match):
        list(wire.parse_sse(lines))
    assert issubclass(wire.WireError, ValueError)


def test_sse_is_read_as_it_arrives():
    seen = []

    def lines():
        for line in ('data: {"n": 1}', "", 'data: {"n": 2}', ""):
            seen.append(line)
            yield line

    events = wire.parse_sse(lines())
    assert next(events) == {"n": 1} and len(seen) == 2


# ----------------------------------------------------------------------------------------- error bodies
@pytest.mark.parametrize("body, message", [
    (b'{"error": "invalid max_tokens: must be a positive integer, got 0"}',
     "invalid max_tokens: must be a positive integer, got 0"),
    (b'data: {"error": "invalid text_input: is missing"}\n\n', "invalid text_input: is missing"),
    ('data: {"text_output": "a"}\n\ndata: {"error": "late"}\n\n', "late"),
    (b"plain failure\n", "plain failure"),
    (b'{"message": "no error key"}', '{"message": "no error key"}'),
    (b"data: {broken", "data: {broken"),
    (b"", "(empty error body)"),
    (bytearray(b'{"error": 3}'), "3"),
])
def test_error_bodies(body, message):
    assert wire.error_message(body) == message


def test_generate_replies():
    assert wire.parse_reply(b'{"text_output": "hi"}') == {"text_output": "hi"}
    with pytest.raises(wire.ErrorReply, match="exactly 1 response"):
        wire.parse_reply('{"error": "generate expects model to produce exactly 1 response"}')
    with pytest.raises(wire.WireError, match="malformed reply"):
        wire.parse_reply(b"<html>")
    with pytest.raises(wire.WireError, match="not a JSON object"):
        wire.parse_reply(b"[]")
    assert wire.generate_path("ensemble") == "/v2/models/ensemble/generate"
    assert wire.generate_path("tensorrt_llm_bls", stream=True) == "/v2/models/tensorrt_llm_bls/generate_stream"


# ------------------------------------------------------------------------------------------------ ports
def test_ports_from_the_environment_or_the_defaults(monkeypatch):
    assert dict(wire.DEFAULT_PORTS) == {"http": 8000, "grpc": 8001, "metrics": 8002}
    env = {"TRITON_HTTP_PORT": "18000", "TRITON_GRPC_PORT": ""}
    assert [wire.env_port(k, env) for k in ("http", "grpc", "metrics")] == [18000, 8001, 8002]
    for name in wire.PORT_ENV.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRITON_METRICS_PORT", "9102")
    assert [wire.env_port(k) for k in ("http", "grpc", "metrics")] == [8000, 8001, 9102]
    monkeypatch.setenv("TRITON_GRPC_PORT", "x")
    with pytest.raises(ValueError):
        wire.env_port("grpc")
    with pytest.raises(KeyError):
        wire.env_port("https")


@pytest.mark.parametrize("url, default, expected", [
    ("localhost:8001", 8001, ("localhost", 8001, "http")),
    ("example.org", 8000, ("example.org", 8000, "http")),
    ("https://example.org:8443/", 8000, ("example.org", 8443, "https")),
    ("grpc://10.0.0.1", 8001, ("10.0.0.1", 8001, "grpc")),
    ("[::1]:9000", 8000, ("::1", 9000, "http")),
])
def test_host_port_parsing(url, default, expected):
    assert wire.split_url(url, default) == expected


def test_a_url_without_host_is_refused():
    with pytest.raises(ValueError, match="no host"):
        wire.split_url("http://:8000", 8000)


# ------------------------------------------------------------------------------------------- readiness
class _Triton(BaseHTTPRequestHandler):
    def do_GET(self):
        status, body = self.server.routes.get(self.path, (404, b'{"error": "not found"}'))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_triton():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Triton)
    srv.routes = {"/v2/health/ready": (200, b""), "/v2/models/ensemble/ready": (200, b""),
                  "/v2/models/tensorrt_llm/ready": (400, b'{"error": "not ready"}'),
                  "/metrics": (200, b'm{a="1",model="x"} 2\n')}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_readiness_over_http(fake_triton, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")  # the server is reached directly, never a proxy
    port = fake_triton.server_port
    for url in (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}/"):
        assert wire.is_ready(url) and wire.is_ready(url, model="ensemble")
        assert not wire.is_ready(url, model="tensorrt_llm") and not wire.is_ready(url, model="missing")
    assert wire.http_get(f"http://127.0.0.1:{port}/v2/models/tensorrt_llm/ready") == (400, b'{"error": "not ready"}')
    assert wire.wait_ready(f"127.0.0.1:{port}", timeout_s=0.0)
    assert not wire.wait_ready(f"127.0.0.1:{port}", 0.3, model="tensorrt_llm", interval_s=0.05)
    assert wire.fetch_metrics(f"http://127.0.0.1:{port}/metrics") == {"m": {(("a", "1"), ("model", "x")): 2.0}}
    fake_triton.routes["/v2/health/ready"] = (503, b"")
    assert not wire.is_ready(f"127.0.0.1:{port}")


def test_nothing_listening_is_not_ready():
    assert wire.http_get("http://127.0.0.1:1/v2/health/ready", timeout=1.0) == (0, b"")
    assert not wire.is_ready("127.0.0.1:1", timeout=1.0)
    assert wire.fetch_metrics("http://127.0.0.1:1/metrics", timeout=1.0) is None


# ------------------------------------------------------------------------------------------ Prometheus
METRICS = """# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 3
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
nv_trt_llm_request_metrics{request_type="waiting", model="other", version="2",} 1
nv_inference_request_failure{model="ensemble",reason="BACKEND",version="1"} 2 1712345678000
nv_inference_queue_summary_us{model="ensemble",version="1",quantile="0.99"} NaN
nv_inference_queue_summary_us_count{model="ensemble",version="1"} 12
nv_cpu_utilization 0.25
weird{path="a\\"b\\\\c\\nd",empty=""} +Inf
qwen_triton_engine{counter="steps"} 1e3
not a sample
broken{label=unquoted} 1
novalue{a="1"}
"""


def test_prometheus_text_with_any_label_set():
    fam = wire.parse_metrics(METRICS)
    assert fam["nv_trt_llm_request_metrics"][
        (("model", "tensorrt_llm"), ("request_type", "active"), ("version", "1"))] == 3
    assert fam["nv_inference_request_failure"] == {
        (("model", "ensemble"), ("reason", "BACKEND"), ("version", "1")): 2.0}  # the timestamp is dropped
    assert np.isnan(fam["nv_inference_queue_summary_us"][
        (("model", "ensemble"), ("quantile", "0.99"), ("version", "1"))])
    assert fam["nv_inference_queue_summary_us_count"][(("model", "ensemble"), ("version", "1"))] == 12
    assert fam["nv_cpu_utilization"] == {(): 0.25}
    assert fam["weird"] == {(("empty", ""), ("path", 'a"b\\c\nd')): float("inf")}
    assert fam["qwen_triton_engine"] == {(("counter", "steps"),): 1000.0}
    assert not {"not", "broken", "novalue"} & set(fam)


def test_prometheus_series_and_values_by_label():
    fam = wire.parse_metrics(METRICS)
    requests = c.METRIC_REQUESTS
    assert wire.metric_values(fam, requests, model=c.ENGINE) == {"active": 3, "max": 64}
    assert wire.metric_values(fam, requests) == {"active": 3, "max": 64, "waiting": 1}
    assert wire.metric_values(fam, requests, "model") == {"tensorrt_llm": 64, "other": 1}  # last one wins
    assert wire.metric_values(fam, c.METRIC_ENGINE) == {"steps": 1000.0}  # no model label yet: same answer
    assert wire.metric_values(fam, "nv_inference_request_failure") == {"BACKEND": 2}
    assert wire.metric_values(fam, "nv_cpu_utilization") == {}  # no label to key by
    assert wire.metric_values(fam, "absent") == {}
    series = wire.metric_series(fam, requests, version="2")
    assert series == [({"model": "other", "request_type": "waiting", "version": "2"}, 1.0)]
    assert len(wire.metric_series(fam, requests)) == 3


def test_the_module_stays_light_and_stateless():
    code = ("import sys, qwen_triton.wire as w; "
            "bad = {'tritonclient', 'requests', 'torch', 'gevent', 'grpc'} & set(sys.modules); "
            "print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert json.loads(json.dumps(dict(wire.DEFAULT_PORTS))) == {"http": 8000, "grpc": 8001, "metrics": 8002}

"""The HTTP front's checks (qwen_triton/runtime/front_checks.py) and its proxying, without a server.
The front against a real Triton is tested in tests/test_reliability.py."""
from __future__ import annotations

import json

import httpx
import pytest
from starlette.testclient import TestClient

from qwen_triton.runtime.front import Front, FrontConfig, _HeaderLimit
from qwen_triton.runtime.front_checks import (
    BodyError,
    check_generate_body,
    fault_status,
    json_depth_exceeds,
    parse_json_body,
)

INPUTS = {  # as Triton's /config lists them
    "text_input": {"name": "text_input", "data_type": "TYPE_STRING", "dims": ["1"], "optional": True},
    "max_tokens": {"name": "max_tokens", "data_type": "TYPE_INT32", "dims": ["1"]},
    "random_seed": {"name": "random_seed", "data_type": "TYPE_UINT64", "dims": ["1"], "optional": True},
    "temperature": {"name": "temperature", "data_type": "TYPE_FP32", "dims": ["1"], "optional": True},
    "stream": {"name": "stream", "data_type": "TYPE_BOOL", "dims": ["1"], "optional": True},
    "stop_words": {"name": "stop_words", "data_type": "TYPE_STRING", "dims": ["-1"], "optional": True},
}


def test_depth_scan_ignores_brackets_inside_strings():
    assert json_depth_exceeds(b"[" * 65 + b"]" * 65, 64)
    assert not json_depth_exceeds(b"[" * 64 + b"]" * 64, 64)
    assert not json_depth_exceeds(json.dumps({"a": "[[[[[[[[" * 20, "b": "\\\"[[[["}).encode(), 2)


@pytest.mark.parametrize("body, status, words", [
    (b'{"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}", 400, "nests deeper"),
    (b"\xff\xfe{}", 400, "not valid UTF-8"),
    (b'{"text_input": "hi",', 400, "not valid JSON"),
    (b'{"text_input": "\\ud800"}', 400, "lone surrogate"),
    (b"", 400, "not valid JSON"),
])
def test_bodies_that_are_refused(body, status, words):
    with pytest.raises(BodyError) as err:
        parse_json_body(body, 64)
    assert err.value.status == status and words in str(err.value)


@pytest.mark.parametrize("body, words", [
    ({"text_input": "hi"}, "max_tokens is required"),
    ({"max_tokens": 4294967304}, "max_tokens must be in [-2147483648, 2147483647]"),
    ({"max_tokens": 2**31}, "max_tokens must be in"),
    ({"max_tokens": "abc"}, "max_tokens must be an integer"),
    ({"max_tokens": 1.5}, "max_tokens must be an integer"),
    ({"max_tokens": None}, "max_tokens must be an integer"),
    ({"max_tokens": True}, "max_tokens must be an integer"),
    ({"max_tokens": [1, 2]}, "max_tokens takes one value"),
    ({"max_tokens": [[1]]}, "nested"),
    ({"max_tokens": 8, "random_seed": -1}, "random_seed must be in [0, 18446744073709551615]"),
    ({"max_tokens": 8, "temperature": 1e39}, "temperature must be a finite FP32 number"),
    ({"max_tokens": 8, "text_input": 123}, "text_input must be a string"),
    ({"max_tokens": 8, "stop_words": [123]}, "stop_words must be a string"),
    ({"max_tokens": 8, "stream": "yes"}, "stream must be true or false"),
    ({"max_tokens": 8, "min_tokens": 3}, "min_tokens is not an input of this model"),
    ({"max_tokens": 8, "stream": True}, "use the generate_stream endpoint"),
    ([1, 2, 3], "must be a JSON object"),
])
def test_generate_bodies_that_are_refused_name_the_field(body, words):
    with pytest.raises(BodyError) as err:
        check_generate_body(body, INPUTS, streaming=False)
    assert err.value.status == 400 and words in str(err.value)


def test_good_generate_bodies_pass():
    check_generate_body({"text_input": "hi", "max_tokens": 8, "random_seed": 2**64 - 1, "temperature": 0,
                         "stop_words": ["a", "b"]}, INPUTS, streaming=False)
    check_generate_body({"max_tokens": [8], "stream": True, "stop_words": "a"}, INPUTS, streaming=True)


@pytest.mark.parametrize("status, body, expected", [
    (400, b'{"error":"unavailable: the engine process (pid 7) died"}', 503),
    (400, b'{"error":"Stub process \'tensorrt_llm_0_0\' is not healthy."}', 503),
    (400, b'data: {"error":"internal error: engine error: boom"}\n\n', 500),
    (400, b'{"error":"invalid max_tokens: must be >= 1"}', 400),
    (200, b'data: {"text_output":"unavailable: is not healthy"}\n\n', 200),
])
def test_server_faults_get_5xx(status, body, expected):
    assert fault_status(status, body) == expected


def _front(handler, **config) -> TestClient:
    front = Front(FrontConfig(triton_url="http://triton", **config))
    front.client = httpx.AsyncClient(base_url="http://triton", transport=httpx.MockTransport(handler))
    return TestClient(_HeaderLimit(front.app, front.config.max_header_bytes))


def _triton(request: httpx.Request) -> httpx.Response:
    """Stands in for Triton's HTTP port: the model config, and /generate echoing the body it got."""
    if request.url.path == "/v2/models/ensemble/config":
        return httpx.Response(200, json={"input": list(INPUTS.values())})
    if request.url.path.endswith("/generate"):
        return httpx.Response(200, json={"seen": json.loads(request.content)})
    if request.url.path.endswith("/generate_stream"):
        return httpx.Response(400, content=b'data: {"error":"unavailable: the engine died"}\n\n')
    return httpx.Response(200, json={"path": request.url.path})


def test_the_front_checks_then_forwards_unchanged():
    client = _front(_triton)
    ok = client.post("/v2/models/ensemble/generate", json={"text_input": "你好", "max_tokens": 8})
    assert ok.status_code == 200 and ok.json() == {"seen": {"text_input": "你好", "max_tokens": 8}}
    bad = client.post("/v2/models/ensemble/generate", json={"text_input": "hi", "max_tokens": 4294967304})
    assert bad.status_code == 400 and "max_tokens" in bad.json()["error"]
    deep = client.post("/v2/models/ensemble/generate", content=b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert deep.status_code == 400 and "nests deeper" in deep.json()["error"]
    assert client.post("/v2/models/ensemble/generate_stream", json={"max_tokens": 8}).status_code == 503
    assert client.get("/v2/health/live").json() == {"path": "/v2/health/live"}


def test_the_front_bounds_body_size_and_keeps_the_repository_api_private():
    client = _front(_triton, max_body_bytes=1000)
    big = client.post("/v2/models/ensemble/generate", json={"text_input": "x" * 2000, "max_tokens": 8})
    assert big.status_code == 413
    assert client.post("/v2/repository/models/tensorrt_llm/unload").status_code == 403


def test_readiness_says_why_the_engine_is_down():
    client = _front(_triton, ready=lambda: "the engine is restarting")
    r = client.get("/v2/health/ready")
    assert r.status_code == 503 and r.json() == {"error": "the engine is restarting"}


def test_oversized_headers_get_431():
    client = _front(_triton)
    r = client.get("/v2/health/live", headers={"X-Big": "a" * 65536})
    assert r.status_code == 431 and "headers" in r.json()["error"]

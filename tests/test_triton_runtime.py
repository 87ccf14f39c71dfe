"""The project-local Triton runtime (qwen_triton.runtime: the installer and TritonServer), proved on a toy repo.

The ``server`` tests start a real tritonserver (from ``.triton/``, or ``$TRITON_DIR``) on free ports with
``tests/fixtures/toy_repo``:

* ``echo``          decoupled Python model: UTF-8 text back, one response per character when ``stream`` is
                    true (``text_output`` BYTES, ``index`` INT32); empty text is a bad request.
* ``upper``         Python model upper-casing ``TEXT`` (the "postprocessing" step).
* ``toy_ensemble``  echo -> upper, upper running once per streamed response.
* ``pyinfo``        reports the stub's interpreter, numpy and loaded libpython.

They are skipped only when Triton is not installed (``make triton-install``).  The rest are unit tests of
the installer that need neither the wheel nor the server.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
import requests

from qwen_triton.runtime import install, interpreter, layout, wheel
from qwen_triton.runtime.server import TritonError, TritonServer, default_python

ROOT = Path(__file__).resolve().parents[1]

TOY_REPO = ROOT / "tests" / "fixtures" / "toy_repo"
TRITON_DIR = Path(os.environ.get("TRITON_DIR", ROOT / ".triton"))
INSTALLED = layout.is_installed(TRITON_DIR)

SERVER_MARKS = [
    pytest.mark.server,
    pytest.mark.skipif(
        not INSTALLED,
        reason=f"Triton is not installed in {TRITON_DIR}: run `make triton-install` "
        "(python -m qwen_triton.runtime.install)",
    ),
]


# ------------------------------------------------------------------------------------- installer units
def test_wheel_members_are_mapped_for_the_target_stub():
    want = wheel.member_target
    stub = "pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub"
    assert want(stub, "3.11") == "pytriton/tritonserver/backends/python/triton_python_backend_stub"
    assert want(stub, "3.12") is None
    assert want("pytriton/tritonserver/bin/tritonserver", "3.11") == "pytriton/tritonserver/bin/tritonserver"
    lib313 = "nvidia_pytriton.libs/libpython3-419a3a08.13.so.1.0"
    assert want(lib313, "3.11") is None
    assert want(lib313, "3.13") == lib313  # the 3.13 stub links the bundled libpython
    assert want("nvidia_pytriton.libs/libcurl-75a2bf80.so.4.7.0", "3.11") is not None
    assert want("pytriton/models/model.py", "3.11") is None
    assert want("pytriton/tritonserver/", "3.11") is None


def test_checksum_mismatch_is_a_clear_error(tmp_path):
    fake = tmp_path / layout.WHEEL_FILENAME
    fake.write_bytes(b"not a wheel")
    with pytest.raises(layout.InstallError, match="checksum mismatch"):
        wheel.verify_wheel(fake)


def test_unknown_python_version_has_no_stub():
    with pytest.raises(layout.InstallError, match="no Python-backend stub for Python 3.7"):
        interpreter.resolve_python("3.7")
    assert interpreter.resolve_python("3.12") == ("3.12", None)


def test_numpy_2_is_flagged():
    info = {"executable": "py", "numpy": "2.4.6"}
    assert "numpy 1.x" in interpreter.numpy_warning(info)
    assert interpreter.numpy_warning(dict(info, numpy="1.26.4")) is None
    assert "No module named 'numpy'" in interpreter.numpy_warning(dict(info, numpy=None))


@pytest.mark.skipif(not INSTALLED, reason=f"Triton is not installed in {TRITON_DIR}")
def test_reinstall_is_a_noop(capsys):
    marker = install.install(TRITON_DIR, python=default_python())
    assert marker["wheel_sha256"] == layout.WHEEL_SHA256
    assert "nothing to do" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    logs = tmp_path_factory.mktemp("triton-logs")
    srv = TritonServer(
        TOY_REPO, http_port=0, grpc_port=0, metrics_port=0, triton_dir=TRITON_DIR, log_file=logs / "toy.log"
    )
    srv.start_and_wait(timeout=90)
    try:
        yield srv
    finally:
        srv.stop()


def _generate(srv, model, body, stream=False):
    suffix = "generate_stream" if stream else "generate"
    return requests.post(f"{srv.http_url}/v2/models/{model}/{suffix}", json=body, timeout=30, stream=stream)


def _sse_events(resp):
    events = []
    for line in resp.iter_lines(decode_unicode=False):
        if line.startswith(b"data: "):
            events.append(json.loads(line[len(b"data: ") :].decode("utf-8")))
    return events


class TestToyServer:
    pytestmark = SERVER_MARKS

    def test_health_and_models_ready(self, server):
        assert requests.get(f"{server.http_url}/v2/health/live", timeout=5).status_code == 200
        assert requests.get(f"{server.http_url}/v2/health/ready", timeout=5).status_code == 200
        index = requests.post(f"{server.http_url}/v2/repository/index", json={}, timeout=5).json()
        states = {m["name"]: m.get("state") for m in index}
        assert states == {"echo": "READY", "upper": "READY", "toy_ensemble": "READY", "pyinfo": "READY"}

    def test_stub_runs_in_the_venv_with_its_own_libpython(self, server):
        info = json.loads(_generate(server, "pyinfo", {"QUERY": "?"}).json()["INFO"])
        probe = server.python_info()
        assert info["prefix"] == probe["prefix"]  # the venv (PATH), not the base interpreter
        assert info["version"] == probe["full_version"]  # not Debian's libpython3.11 (3.11.2)
        assert info["numpy"].startswith("1."), info  # the stub needs numpy 1.x
        assert info["libpython"] and all(p.startswith(probe["libdir"]) for p in info["libpython"]), info

    def test_generate(self, server):
        resp = _generate(server, "echo", {"text_input": "héllo 你好"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["text_output"] == "héllo 你好"
        assert body["index"] == len("héllo 你好")
        resp = _generate(server, "toy_ensemble", {"text_input": "abc déf"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["text_output"] == "ABC DÉF"

    def test_generate_with_several_responses_is_an_error_in_the_body(self, server):
        # Triton 2.51 answers status 200 here: clients must look at the body.
        resp = _generate(server, "echo", {"text_input": "abc", "stream": True})
        assert "exactly 1 response" in resp.json()["error"]

    def test_generate_stream_sse(self, server):
        body = {"text_input": "你好ab", "stream": True}
        with _generate(server, "toy_ensemble", body, stream=True) as resp:
            assert resp.status_code == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = _sse_events(resp)
        assert [e["text_output"] for e in events] == ["你", "好", "A", "B"]
        assert [e["index"] for e in events] == [0, 1, 2, 3]

    def test_grpc_streaming(self, server):
        import tritonclient.grpc as grpcclient

        results: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=lambda result, error: results.put((result, error)))  # keywords!
        try:
            cases = (("echo", ["你", "好", "é", "!"]), ("toy_ensemble", ["你", "好", "É", "!"]))
            for model, expect in cases:
                text = grpcclient.InferInput("text_input", [1], "BYTES")
                text.set_data_from_numpy(np.array(["你好é!".encode()], dtype=np.object_))
                stream = grpcclient.InferInput("stream", [1], "BOOL")
                stream.set_data_from_numpy(np.array([True]))
                inputs = [text, stream]
                if model == "echo":
                    delay = grpcclient.InferInput("delay_ms", [1], "INT32")
                    delay.set_data_from_numpy(np.array([5], dtype=np.int32))
                    inputs.append(delay)
                client.async_stream_infer(model, inputs, request_id=model, enable_empty_final_response=True)
                chunks, indexes, finals = [], [], []
                while True:
                    result, error = results.get(timeout=20)
                    assert error is None, error
                    final = result.get_response().parameters["triton_final_response"].bool_param
                    finals.append(final)
                    # The final flag comes as an empty response from echo, but the ensemble may put it on
                    # its last data response: read data whenever there is some.
                    if result.as_numpy("text_output") is not None:
                        index = result.as_numpy("index")
                        assert index.dtype == np.int32
                        indexes.append(int(index[0]))
                        chunks.append(result.as_numpy("text_output")[0].decode("utf-8"))
                    if final:
                        break
                assert chunks == expect, (model, finals)
                assert indexes == [0, 1, 2, 3]
                print(model, "responses:", len(finals))
        finally:
            client.stop_stream()
            client.close()

    def test_bad_request_gets_400_with_the_models_message(self, server):
        msg = "echo: text_input must be a non-empty string"
        resp = _generate(server, "echo", {"text_input": "   "})
        assert resp.status_code == 400
        assert resp.json()["error"] == msg
        resp = _generate(server, "toy_ensemble", {"text_input": ""})
        assert resp.status_code == 400
        assert msg in resp.json()["error"]
        with _generate(server, "toy_ensemble", {"text_input": "", "stream": True}, stream=True) as resp:
            assert resp.status_code == 400
            assert msg in _sse_events(resp)[0]["error"]

        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        results: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        try:
            text = grpcclient.InferInput("text_input", [1], "BYTES")
            text.set_data_from_numpy(np.array([b""], dtype=np.object_))
            client.async_stream_infer("echo", [text], enable_empty_final_response=True)
            _result, error = results.get(timeout=20)
            assert isinstance(error, InferenceServerException)
            assert msg in error.message()
        finally:
            client.stop_stream()
            client.close()

        # ... and the server is still healthy and serving.
        assert requests.get(f"{server.http_url}/v2/health/ready", timeout=5).status_code == 200
        assert _generate(server, "echo", {"text_input": "ok"}).json()["text_output"] == "ok"

    def test_metrics(self, server):
        _generate(server, "toy_ensemble", {"text_input": "m"})
        text = requests.get(server.metrics_url, timeout=5).text
        assert 'nv_inference_request_success{model="toy_ensemble",version="1"}' in text
        settings = server.metrics_settings()
        if "summary_latencies" in settings:
            assert "nv_inference_request_summary_us" in text
        if "histogram_latencies" in settings:
            assert "nv_inference_first_response_histogram_ms" in text


@pytest.mark.server
@pytest.mark.skipif(not INSTALLED, reason=f"Triton is not installed in {TRITON_DIR}")
def test_failed_start_raises_with_the_log_tail(tmp_path):
    broken = tmp_path / "repo" / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
    )
    (broken / "1" / "model.py").write_text(
        textwrap.dedent(
            """
            class TritonPythonModel:
                def initialize(self, args):
                    raise RuntimeError("boom-42 in initialize")
            """
        )
    )
    srv = TritonServer(tmp_path / "repo", http_port=0, grpc_port=0, metrics_port=0, triton_dir=TRITON_DIR,
                       log_file=tmp_path / "broken.log")  # fmt: skip
    with pytest.raises(TritonError, match="boom-42 in initialize") as info:
        srv.start_and_wait(timeout=60)
    assert "exited with code" in str(info.value)
    assert srv.proc.poll() is not None


def test_libdir_is_what_the_server_puts_first():
    # Guard for the LD_LIBRARY_PATH rule: this interpreter's LIBDIR holds its shared libpython.
    libdir = sysconfig.get_config_var("LIBDIR")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        pytest.skip("this Python is not built with --enable-shared")
    srv = TritonServer(TOY_REPO, http_port=0, grpc_port=0, metrics_port=0, python=sys.executable)
    env = srv.environment()
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == libdir
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).absolute().parent)

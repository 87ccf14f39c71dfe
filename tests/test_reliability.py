"""Nothing a client sends breaks the server, and a dead engine is found and restarted: the supervisor
(qwen_triton/runtime/supervisor.py) runs tritonserver behind the HTTP front on the random-weight model.
Each test reproduces a finding of the reliability issue against the served stack."""
from __future__ import annotations

import bisect
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from served import TRITON_DIR, build_repo, grpc_stream, needs_triton, scrape
from served import supervised as supervised_stack

from qwen_triton.runtime.process import processes
from qwen_triton.runtime.server import TritonServer
from qwen_triton.runtime.supervisor import Supervisor
from qwen_triton.serving import contract as c

pytestmark = [pytest.mark.server, needs_triton]
SETS = ("max_num_seqs=8", "max_output_len=512", "max_input_len=256")


@pytest.fixture(scope="module")
def supervised(tmp_path_factory, random_checkpoint):
    """A supervised server of this module's own: its tests kill its processes."""
    with supervised_stack(tmp_path_factory.mktemp("reliability"), SETS, random_checkpoint.parent) as supervisor:
        yield supervisor


def url(sv: Supervisor, path: str) -> str:
    return f"http://127.0.0.1:{sv.http_port}{path}"


def generate(sv: Supervisor, body, stream: bool = False, **kw) -> requests.Response:
    path = f"/v2/models/{c.ENSEMBLE}/generate{'_stream' if stream else ''}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url(sv, path), data=data, timeout=60, **kw)


def alive(sv: Supervisor) -> bool:
    ok = generate(sv, {"text_input": "still there?", "max_tokens": 4, "temperature": 0.0})
    return ok.status_code == 200 and c.TEXT_OUTPUT in ok.json()


def test_deeply_nested_json_is_refused_and_the_server_lives(supervised):
    """Finding 1: 200,000-deep JSON to /generate killed tritonserver (SIGSEGV)."""
    body = b'{"text_input":"hi","max_tokens":8,"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    r = generate(supervised, body)
    assert r.status_code == 400 and "nests deeper" in r.json()["error"]
    assert supervised.server.proc.poll() is None and alive(supervised)


@pytest.mark.parametrize("body, status, words", [
    # finding 3: a missing max_tokens "succeeded" empty
    ({"text_input": "hi"}, 400, "max_tokens is required"),
    # finding 4: client errors answered 500
    ({"text_input": "hi", "max_tokens": "abc"}, 400, "max_tokens must be an integer"),
    ({"text_input": "hi", "max_tokens": 1.5}, 400, "max_tokens must be an integer"),
    ({"text_input": "hi", "max_tokens": None}, 400, "max_tokens must be an integer"),
    ({"text_input": 123, "max_tokens": 8}, 400, "text_input must be a string"),
    ({"text_input": "hi", "max_tokens": 8, "random_seed": -1}, 400, "random_seed must be in"),
    ({"text_input": "hi", "max_tokens": 8, "stop_words": [123]}, 400, "stop_words must be a string"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}, 400, "messages must be a string"),
    (b'{"text_input": "\\ud800", "max_tokens": 8}', 400, "lone surrogate"),
    (b"this is not json", 400, "not valid JSON"),
    (b"[1,2,3]", 400, "must be a JSON object"),
    (b"", 400, "not valid JSON"),
    # finding 5: integers wrapped (4294967304 ran as 8)
    ({"text_input": "hi", "max_tokens": 4294967304}, 400, "max_tokens must be in [-2147483648, 2147483647]"),
    ({"text_input": "hi", "max_tokens": 8, "end_id": 2**32 + 5}, 400, "end_id must be in"),
    ({"text_input": "hi", "max_tokens": 2**31}, 400, "max_tokens must be in"),
    # the model's own checks, still 400
    ({"text_input": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"text_input": "hi", "max_tokens": 8, "top_p": 1.5}, 400, "top_p"),
])
def test_client_errors_get_4xx_naming_the_field(supervised, body, status, words):
    for stream in (False, True):
        payload = dict(body, stream=True) if stream and isinstance(body, dict) else body
        r = generate(supervised, payload, stream=stream)
        assert r.status_code == status and words in r.text, (stream, r.status_code, r.text)


def test_stream_true_on_generate_is_refused(supervised):
    """Finding 3: `stream: true` on /generate answered 200 with an error body."""
    r = generate(supervised, {"text_input": "hi", "max_tokens": 4, "stream": True})
    assert r.status_code == 400 and "generate_stream" in r.json()["error"]


def test_grpc_without_max_tokens_is_an_error(supervised):
    """Finding 3 over gRPC: one empty response that looked like success."""
    inputs = {c.TEXT_INPUT: np.array([[b"hi"]], dtype=object), c.STREAM: np.array([[True]])}
    with pytest.raises(RuntimeError, match="max_tokens"):
        grpc_stream(_grpc_target(supervised), inputs=inputs)


def _grpc_target(sv: Supervisor):
    return type("Target", (), {"grpc_url": sv.server.grpc_url})()


def test_oversized_headers_get_431(supervised):
    """Finding 7: 64 KB of headers got a TCP reset."""
    with socket.create_connection(("127.0.0.1", supervised.http_port)) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
        s.settimeout(10)
        assert s.recv(64).startswith(b"HTTP/1.1 431")


def _status(pid: int, field: str) -> int:
    """A number of /proc/<pid>/status (VmRSS in kB, Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _rss_kb(pid: int) -> int:
    return _status(pid, "VmRSS")


def _stub(sv: Supervisor, model: str) -> int:
    return next(pid for pid, _, cmd in processes() if "triton_python_backend_stub" in cmd
                and f"/{model}/1/model.py" in cmd and str(sv.server.model_repository) in cmd)


def test_abandoned_streams_leave_no_memory_behind(supervised):
    """Finding 6: cancelled ensemble streams leaked 22-30 MB per 8 in tritonserver and kept generating."""
    def abandon_round():
        for _ in range(8):
            r = requests.post(url(supervised, f"/v2/models/{c.ENSEMBLE}/generate_stream"), stream=True, timeout=60,
                              json={"text_input": "a long story", "max_tokens": 400, "min_length": 400,
                                    "stream": True})
            next(line for line in r.iter_lines() if line.startswith(b"data: "))
            r.close()
        deadline = time.time() + 10
        while time.time() < deadline and scrape(supervised.server, c.METRIC_REQUESTS).get("active", 1):
            time.sleep(0.1)
    abandon_round()  # warm-up: allocations that stay for good
    before = _rss_kb(supervised.server.pid)
    for _ in range(3):
        abandon_round()
    grown_mb = (_rss_kb(supervised.server.pid) - before) / 1024
    kv = scrape(supervised.server, c.METRIC_KV_BLOCKS)
    assert kv["free"] == kv["max"] and scrape(supervised.server, c.METRIC_REQUESTS)["active"] == 0
    assert grown_mb < 16, f"tritonserver grew {grown_mb:.1f} MB over 24 abandoned streams"
    # and their serving threads are free again: a request whose end never reached the entry model (an
    # error response the Python backend dropped inside a BLS stream, before the engine link) keeps one for good
    threads = _status(_stub(supervised, c.ENSEMBLE), "Threads")
    for _ in range(2):
        abandon_round()
    assert _status(_stub(supervised, c.ENSEMBLE), "Threads") < threads + 4


def test_a_queue_in_the_engine_does_not_stall_the_streams(supervised):
    """GPU soak finding: the Python backend serves a stub's BLS calls and response sends on 32 threads,
    and a BLS call holds its thread until the engine's first response; with 32 requests queued in the
    engine, the streams being served got no chunk until the queue drained (0 chunks in 150 s at scale).
    Now the entry models reach the engine over the engine link, which holds no Triton thread: with 12x its
    batch of streams (max_num_seqs=8), the streams end batch by batch, not all at once when the queue is gone."""
    t0, results = time.monotonic(), []

    def one(i: int) -> None:
        events, error = [], None
        try:
            with requests.post(url(supervised, f"/v2/models/{c.ENSEMBLE}/generate_stream"), stream=True,
                               timeout=120, json={"text_input": f"story {i}", "max_tokens": 12, "min_length": 12,
                                                  "temperature": 0.0, "stream": True}) as r:
                events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith(b"data: ")]
        except requests.RequestException as exc:
            error = repr(exc)
        error = error or next((e["error"] for e in events if "error" in e), None)
        results.append((time.monotonic() - t0, error, len(events)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(96)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    failed = [r for r in results if r[1] is not None or r[2] == 0]
    assert len(results) == 96 and not failed, failed[:4]
    ends = sorted(r[0] for r in results)
    # served in batches of 8, about 8-16 streams end in any tenth of the run; stalled, the sends of
    # dozens of finished requests go out together once the queue drains (65 of 96 within 0.3 s of 4 s)
    window = ends[-1] / 10
    crowd = max(bisect.bisect_right(ends, e + window) - i for i, e in enumerate(ends))
    assert crowd <= 32, [round(e, 1) for e in ends]
    deadline = time.monotonic() + 5
    while scrape(supervised.server, c.METRIC_REQUESTS)["active"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert scrape(supervised.server, c.METRIC_REQUESTS)["active"] == 0


def _stream_until_error(sv: Supervisor, results: list, key: str) -> None:
    r = requests.post(url(sv, f"/v2/models/{c.ENSEMBLE}/generate_stream"), stream=True, timeout=60,
                      json={"text_input": "hi", "max_tokens": 500, "min_length": 500, "stream": True})
    last = b""
    for line in r.iter_lines():
        if line.startswith(b"data: "):
            last = line
    results.append((key, last, time.monotonic()))


def test_a_dead_engine_fails_fast_and_is_restarted(supervised):
    """Finding 2: after kill -9 of the engine's process, requests hung, readiness stayed 200, the engine
    was never restarted. Now: in-flight requests fail within seconds, readiness drops, the supervisor
    reloads the engine, and readiness and requests come back."""
    results: list = []
    threads = [threading.Thread(target=_stream_until_error, args=(supervised, results, f"s{i}")) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    engine = next(pid for pid, _, cmd in processes()
                  if "triton_python_backend_stub" in cmd and f"/{c.ENGINE}/1/model.py" in cmd
                  and str(supervised.server.model_repository) in cmd)
    statuses: list[int] = []

    def sample_readiness():
        while time.monotonic() - killed_at < 120 and not (statuses[-1:] == [200] and 503 in statuses):
            statuses.append(requests.get(url(supervised, "/v2/health/ready"), timeout=5).status_code)
            time.sleep(0.1)

    killed_at = time.monotonic()
    os.kill(engine, signal.SIGKILL)
    sampler = threading.Thread(target=sample_readiness)
    sampler.start()
    for t in threads:
        t.join(30)
    assert len(results) == 3
    for _, last, ended in results:
        assert b"unavailable: the engine process" in last and b"died" in last, last
        assert ended - killed_at < 10, ended - killed_at  # failed within seconds of the kill (5 s when idle)
    sampler.join(130)
    assert 503 in statuses and statuses[-1] == 200, statuses[-5:]
    assert alive(supervised)


def _stream_on(sv: Supervisor, model: str, started: threading.Event, ends: list) -> None:
    """A long stream whose model's process the test kills under it: its last event and when it ended."""
    last = b""
    try:
        with requests.post(url(sv, f"/v2/models/{model}/generate_stream"), stream=True, timeout=(5, 60),
                           json={"text_input": "hi", "max_tokens": 500, "min_length": 500, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: "):
                    last = line
                    started.set()
    except requests.RequestException as exc:
        last = repr(exc).encode()
    ends.append((last, time.monotonic()))


def test_any_dead_model_process_is_restarted_and_holds_up_no_other(supervised):
    """GPU soak findings: the tensorrt_llm_bls stub died and every request to it answered 'Stub process
    is not healthy' for the rest of the run; an entry model's process that died with streams in flight
    stopped every stream of every model (the engine's one sender thread waited forever on a response to
    the dead process); and the requests it was serving never ended. Now the supervisor reloads any model
    whose process died, the front ends what that model was serving with a 503-class error, and the engine
    sends each engine link connection's responses on its own thread and aborts a connection's requests
    when it ends (the dead process's link)."""
    started, ends = [threading.Event() for _ in range(3)], []
    for event in started:
        threading.Thread(target=_stream_on, args=(supervised, c.BLS, event, ends), daemon=True).start()
    assert all(event.wait(30) for event in started)
    os.kill(_stub(supervised, c.BLS), signal.SIGKILL)
    killed_at = time.monotonic()
    # the other entry model is served meanwhile, and the dead caller's requests leave the engine
    body = {"text_input": "still there?", "max_tokens": 4, "temperature": 0.0}
    ok = requests.post(url(supervised, f"/v2/models/{c.ENSEMBLE}/generate"), json=body, timeout=30)
    assert ok.status_code == 200 and c.TEXT_OUTPUT in ok.json(), ok.text
    while scrape(supervised.server, c.METRIC_REQUESTS)["active"] and time.monotonic() - killed_at < 15:
        time.sleep(0.2)
    assert scrape(supervised.server, c.METRIC_REQUESTS)["active"] == 0
    kv = scrape(supervised.server, c.METRIC_KV_BLOCKS)
    assert kv["free"] == kv["max"]
    deadline = time.monotonic() + 15
    while len(ends) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(ends) == 3
    for last, ended in ends:  # the streams on the dead process ended with an error, within seconds
        assert b"unavailable" in last and b"process died" in last, last
        assert ended - killed_at < 10, ended - killed_at
    deadline, reply = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        reply = requests.post(url(supervised, f"/v2/models/{c.BLS}/generate"), json=body, timeout=60)
        if reply.status_code == 200:
            break
        time.sleep(0.5)
    assert reply is not None and reply.status_code == 200 and c.TEXT_OUTPUT in reply.json(), reply.text
    assert requests.get(url(supervised, "/v2/health/ready"), timeout=5).status_code == 200


def test_hundreds_of_concurrent_streams_through_the_entry_models(supervised):
    """GPU soak finding 6: about 250 concurrent streams through ensemble and tensorrt_llm_bls crashed their
    stub processes (SIGSEGV in Triton 2.51's BLS decoupled response path) every time. The entry models now
    reach the engine over the engine link: 300 streams at once all end with their reply, no process dies."""
    stubs = {model: _stub(supervised, model) for model in (c.ENSEMBLE, c.BLS, c.ENGINE)}
    results: list = []

    def one(i: int) -> None:
        model = c.BLS if i % 4 == 0 else c.ENSEMBLE
        body = {"text_input": f"burst {i}", "max_tokens": 6, "min_length": 6, "stream": True}
        try:
            with requests.post(url(supervised, f"/v2/models/{model}/generate_stream"), stream=True, timeout=120,
                               json=body) as r:
                events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith(b"data: ")]
            results.append((r.status_code, [e.get("error") for e in events if "error" in e], len(events)))
        except requests.RequestException as exc:
            results.append((0, [repr(exc)], 0))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    failed = [r for r in results if r[0] != 200 or r[1] or not r[2]]
    assert len(results) == 300 and not failed, failed[:4]
    assert {model: _stub(supervised, model) for model in stubs} == stubs
    deadline = time.monotonic() + 10
    while scrape(supervised.server, c.METRIC_REQUESTS)["active"] and time.monotonic() < deadline:
        time.sleep(0.1)
    kv = scrape(supervised.server, c.METRIC_KV_BLOCKS)
    assert scrape(supervised.server, c.METRIC_REQUESTS)["active"] == 0 and kv["free"] == kv["max"]


def test_stopping_leaves_no_process_or_shared_memory(tmp_path, random_checkpoint):
    """Finding 1's aftermath: a crashed tritonserver left its engine running with its /dev/shm files,
    and `make stop` left them. A stopped server leaves neither, even after a crash."""
    repo = build_repo(tmp_path, sets=SETS, artifacts=random_checkpoint.parent)
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, triton_dir=TRITON_DIR,
                          log_file=tmp_path / "triton.log", extra_args=["--exit-timeout-secs=5"])
    server.start_and_wait(180)
    assert list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
    os.kill(server.pid, signal.SIGKILL)  # a crash: the stubs are orphaned
    time.sleep(1)
    assert any(str(repo) in cmd for _, _, cmd in processes() if "triton_python_backend_stub" in cmd)
    server.stop()
    left = [(pid, ppid, cmd) for pid, ppid, cmd in processes() if "triton_python_backend_stub" in cmd
            and str(repo) in cmd]
    assert not left
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))


def test_the_cli_runs_the_supervisor_and_stop_cleans_up(tmp_path, random_checkpoint):
    """`make serve` / `make stop`: the background supervisor serves through the front; stop ends it all."""
    repo = build_repo(tmp_path, sets=SETS, artifacts=random_checkpoint.parent)
    ports = [str(_free()) for _ in range(3)]
    pid_file = tmp_path / "server.pid"
    cli = [sys.executable, "-m", "qwen_triton.runtime", "--pid-file", str(pid_file)]
    start = subprocess.run([*cli, "start", "--model-repository", str(repo), "--http-port", ports[0],
                            "--grpc-port", ports[1], "--metrics-port", ports[2], "--triton-dir", str(TRITON_DIR),
                            "--log-file", str(tmp_path / "triton.log"), "--", "--exit-timeout-secs=5"],
                           capture_output=True, text=True, timeout=300)
    assert start.returncode == 0, start.stdout + start.stderr
    state = json.loads(pid_file.with_suffix(".json").read_text())
    assert state["supervised"] and state["http_port"] == int(ports[0])
    r = requests.post(f"http://127.0.0.1:{ports[0]}/v2/models/{c.ENSEMBLE}/generate", timeout=60,
                      json={"text_input": "hi", "max_tokens": 4})
    assert r.status_code == 200
    status = subprocess.run([*cli, "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and json.loads(status.stdout)["models"][c.ENGINE] == "READY"
    assert subprocess.run([*cli, "stop"], capture_output=True, text=True, timeout=120).returncode == 0
    assert not any(str(repo) in cmd for _, _, cmd in processes())
    # a supervisor that must be killed (stop's timeout over) leaves its tritonserver in its own process
    # group: stop ends that one, its stubs and shared memory too (found when a long soak's stop timed out)
    start = subprocess.run(start.args, capture_output=True, text=True, timeout=300)
    assert start.returncode == 0, start.stdout + start.stderr
    shm = json.loads(pid_file.with_suffix(".json").read_text())["shm_prefix"]
    stop = subprocess.run([*cli, "stop", "--timeout", "0"], capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0 and "SIGKILL" in stop.stdout, stop.stdout + stop.stderr
    assert not any(str(repo) in cmd for _, _, cmd in processes())
    assert not list(Path("/dev/shm").glob(f"{shm}*"))


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

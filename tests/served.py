"""Build a model repository with the real build step and serve it with the real
tritonserver (from .triton/) on free ports: the fixtures of the end-to-end tests."""
from __future__ import annotations

import queue
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from qwen_triton import wire
from qwen_triton.runtime.server import TritonServer
from qwen_triton.runtime.supervisor import Supervisor, SupervisorConfig
from qwen_triton.serving import contract as c

ROOT = Path(__file__).resolve().parents[1]

TRITON_DIR = ROOT / ".triton"

needs_triton = pytest.mark.skipif(not (TRITON_DIR / ".installed.json").exists(),
                                  reason="Triton is not installed: run `make triton-install`")


def build_repo(dest: Path, model: str = "random", sets: tuple[str, ...] = (), artifacts: Path | None = None) -> Path:
    """Run `python -m build` into dest/model_repo (artifacts in dest/artifacts unless given).
    `model`: "random" (the random-weight Qwen2: fast), a checkpoint folder or a .gguf file."""
    cmd = [sys.executable, "-m", "build", "-q", "--model-repo", str(dest / "model_repo"),
           "--artifacts", str(artifacts or dest / "artifacts"), "--model", model]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return dest / "model_repo"


@contextmanager
def supervised(root: Path, sets: tuple[str, ...], artifacts: Path | None = None):
    """The random-weight model built with `sets` under root (its checkpoint in `artifacts`, else under root),
    served by the supervisor (tritonserver behind the HTTP front, model processes watched); yields the
    Supervisor, ready."""
    repo = build_repo(root, sets=sets, artifacts=artifacts)
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, triton_dir=TRITON_DIR,
                          log_file=root / "triton.log", extra_args=["--exit-timeout-secs=5"])
    supervisor = Supervisor(server, SupervisorConfig(http_port=0, run_dir=root / "run", poll_s=0.2))
    supervisor.start()
    try:
        assert supervisor.wait_ready(60)
        yield supervisor
    finally:
        supervisor.stop(timeout=20)


@contextmanager
def serve(repo: Path, log: Path):
    # a short exit timeout: Triton 2.51 keeps a cancelled ensemble request "in flight" for good
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, triton_dir=TRITON_DIR, log_file=log,
                          extra_args=["--exit-timeout-secs=5"])
    server.start_and_wait(timeout=180)
    try:
        yield server
    finally:
        server.stop()


# the settings of the random-weight model's shared server (conftest.random_served): batches of 16+ requests,
# replies up to 2048 tokens (a cancelled one must be seen to stop long before its end)
RANDOM_MAX_OUTPUT_LEN = 2048
RANDOM_SETS = ("max_num_seqs=32", f"max_output_len={RANDOM_MAX_OUTPUT_LEN}", "max_input_len=512")


@dataclass(frozen=True)
class RandomServed:
    """A served random-weight model: the server, its model repository and the checkpoint it serves."""

    server: TritonServer
    repo: Path
    checkpoint: Path


@contextmanager
def random_stack(root: Path, sets: tuple[str, ...], checkpoint: Path):
    """The random-weight model (`checkpoint`: conftest.random_checkpoint) built with `sets` and served;
    yields a :class:`RandomServed` once the server is ready."""
    repo = build_repo(root, sets=sets, artifacts=checkpoint.parent)
    with serve(repo, root / "triton.log") as server:
        yield RandomServed(server, repo, checkpoint)


def scrape(server: TritonServer, family: str) -> dict[str, float]:
    """{label value: number} of one metric family from the metrics port: the value of each series' one
    label besides model and version (see qwen_triton.wire.metric_values)."""
    families = wire.fetch_metrics(server.metrics_url)
    assert families is not None, f"{server.metrics_url} did not answer"
    return wire.metric_values(families, family)


def scrape_series(server: TritonServer, family: str) -> dict[tuple, float]:
    """{labels as sorted (name, value) pairs: number} of every series of one metric family."""
    families = wire.fetch_metrics(server.metrics_url)
    assert families is not None, f"{server.metrics_url} did not answer"
    return dict(families.get(family, {}))


def http_generate(server, body: dict, model: str = c.ENSEMBLE) -> requests.Response:
    return requests.post(server.http_url + wire.generate_path(model), json=body, timeout=120)


def http_stream(server, body: dict, model: str = c.ENSEMBLE) -> list[dict]:
    """Every event of one /generate_stream request, error events ({"error": ...}) included."""
    r = requests.post(server.http_url + wire.generate_path(model, stream=True), json={**body, "stream": True},
                      stream=True, timeout=120)
    return list(wire.parse_sse(r.iter_lines(decode_unicode=False)))


def _grpc_input(name: str, arr: np.ndarray):
    import tritonclient.grpc as grpcclient

    t = grpcclient.InferInput(name, list(arr.shape), wire.triton_dtype(arr.dtype))
    t.set_data_from_numpy(arr)
    return t


def grpc_stream(server, text: str | None = None, messages: str | None = None, max_tokens: int = 24,
                cancel_after: int | None = None, model: str = c.ENSEMBLE, inputs: dict | None = None,
                output: str = c.TEXT_OUTPUT) -> list:
    """Stream over gRPC; return the chunks of `output` (cancel after `cancel_after` chunks if given)."""
    import tritonclient.grpc as grpcclient

    if inputs is None:
        inputs = {c.MAX_TOKENS: np.array([[max_tokens]], np.int32), c.STREAM: np.array([[True]]),
                  c.TEMPERATURE: np.array([[0.0]], np.float32)}
        if text is not None:
            inputs[c.TEXT_INPUT] = np.array([[text.encode()]], dtype=object)
        if messages is not None:
            inputs[c.MESSAGES] = np.array([[messages.encode()]], dtype=object)
    chunks: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: chunks.put((result, error)))
    client.async_stream_infer(model, [_grpc_input(k, v) for k, v in inputs.items()],
                              enable_empty_final_response=True)
    out: list = []
    try:
        while True:
            result, error = chunks.get(timeout=120)
            if error is not None:
                raise RuntimeError(str(error))
            final = result.get_response().parameters[wire.FINAL_RESPONSE].bool_param
            data = result.as_numpy(output)
            if data is not None:
                out.extend(x.decode("utf-8") if isinstance(x, bytes) else x for x in data.reshape(-1))
            if final:
                break
            if cancel_after is not None and len(out) >= cancel_after:
                client.stop_stream(cancel_requests=True)
                return out
    finally:
        client.stop_stream()
        client.close()
    return out

"""The OpenAI-compatible API served beside Triton as `make serve` runs it: the supervisor starts
tritonserver and `python -m qwen_triton.openai_api` on free ports (the fixture of the tests that drive
the API's clients: the web demo, the terminal chat; and of those that drive tritonserver's own endpoints
with the real model)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from served import TRITON_DIR, build_repo, scrape

from qwen_triton.openai_api.config import ServiceConfig, load_served_model
from qwen_triton.runtime.child import OpenAIService
from qwen_triton.runtime.process import free_port, tail
from qwen_triton.runtime.server import TritonServer
from qwen_triton.runtime.supervisor import Supervisor, SupervisorConfig
from qwen_triton.serving import contract as c
from qwen_triton.wire import http_get

# the settings of the one real-model stack the test files share (conftest.openai_served: the API's, its
# clients', tests/test_clients.py's and tests/test_real_served.py's): replies up to 256 tokens (a stopped
# stream must be seen to stop short of them), a prompt window for multi-turn chats, 16 requests at once
# (test_real_served.py sends 18 together: they share the engine's steps)
OPENAI_SETS = ("max_num_seqs=16", "max_output_len=256", "max_input_len=1024", "device=cpu")


@dataclass(frozen=True)
class OpenAIStack:
    """A served stack: its supervisor, the API's base URL (".../v1") and the served model's name."""

    supervisor: Supervisor
    base_url: str
    model: str
    repo: Path

    def engine_counters(self) -> dict[str, float]:
        """The engine's counters (steps, generated_tokens, ...), once its gauges' next export (every 100 ms)
        has counted what finished just now."""
        time.sleep(0.3)
        return scrape(self.supervisor.server, c.METRIC_ENGINE)

    def active_requests(self) -> float:
        """Requests the engine holds now (nv_trt_llm_request_metrics{request_type="active"})."""
        return scrape(self.supervisor.server, c.METRIC_REQUESTS)["active"]


@contextmanager
def openai_stack(root: Path, model: str, sets: tuple[str, ...], ready_s: float = 180.0):
    """Build `model` with `sets` under root and serve it with the OpenAI-compatible API beside Triton;
    yields an :class:`OpenAIStack` once the API answers /health."""
    repo = build_repo(root, model=model, sets=sets)
    port = free_port()
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, triton_dir=TRITON_DIR,
                          log_file=root / "triton.log", extra_args=["--exit-timeout-secs=5"])
    supervisor = Supervisor(server, SupervisorConfig(http_port=0, run_dir=root / "run", poll_s=0.2,
                                                     openai=OpenAIService(port)))
    supervisor.start()
    try:
        deadline = time.monotonic() + ready_s
        while http_get(f"http://127.0.0.1:{port}/health", 1.0)[0] != 200:
            assert time.monotonic() < deadline, tail(root / "openai_api.log") + tail(root / "triton.log")
            time.sleep(0.3)
        name = load_served_model(ServiceConfig(model_repository=repo)).name
        yield OpenAIStack(supervisor, f"http://127.0.0.1:{port}/v1", name, repo)
    finally:
        supervisor.stop(timeout=20)

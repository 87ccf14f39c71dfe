"""The supervisor: tritonserver behind the HTTP front, kept serving.

It starts tritonserver with its own HTTP on 127.0.0.1 only (the public HTTP port is the front's,
qwen_triton/runtime/front.py), gRPC and metrics on the public address, explicit model control (so a
model can be reloaded). A watchdog thread then checks twice a second:

* each model's process (its pid files, qwen_triton/serving/engine_watch.py): when one died, the front's
  readiness says so at once (for the engine, the entry models also fail what was waiting on it), and
  that model is unloaded and loaded again; readiness comes back when it serves;
* tritonserver itself: when it exited, its orphaned stub processes and shared memory are removed
  (TritonServer.stop) and it is started again.

stop() stops the front, lets tritonserver drain (its exit timeout), and removes anything it left behind;
a restart under way finishes first, and none starts after it.
`python -m qwen_triton.runtime start` runs one in the background; `start --foreground` in the
foreground (a container's entry point).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from qwen_triton.serving.engine_watch import RUN_DIR_ENV, EngineWatch
from qwen_triton.wire import http_get, http_post

from .child import OpenAIService, SupervisedProcess
from .front import FrontConfig, create_app
from .process import free_port
from .server import TritonServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorConfig:
    """Where the public ports listen (`host`: 127.0.0.1 unless told otherwise) and the front's limits;
    `openai`: run the OpenAI-compatible API beside Triton (None: do not)."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    engine_model: str = "tensorrt_llm"
    poll_s: float = 0.5
    max_body_bytes: int = 8 << 20
    max_json_depth: int = 64
    reload_timeout_s: float = 600.0
    run_dir: Path = field(default_factory=lambda: Path("logs") / "run")
    openai: OpenAIService | None = None


class Supervisor:
    """One tritonserver and its HTTP front (see the module docstring)."""

    def __init__(self, server: TritonServer, config: SupervisorConfig):
        self.server, self.config = server, config
        self.run_dir = Path(config.run_dir).absolute() / server.shm_prefix.rstrip("-")
        server.extra_args += [
            "--http-address=127.0.0.1", f"--grpc-address={config.host}", f"--metrics-address={config.host}",
            "--model-control-mode=explicit", "--load-model=*"]
        server.extra_env[RUN_DIR_ENV] = str(self.run_dir)
        self.watches = [EngineWatch(self.run_dir, model, what="the engine process" if model == config.engine_model
                                    else f"the {model} model's process") for model in _models(server.model_repository)]
        self.down: str | None = "starting"
        self._stopping = threading.Event()
        self._acting = threading.Lock()  # held by a watchdog step and by stop(): no restart after a stop
        self._threads: list[threading.Thread] = []
        self._front = None
        self._deaths: dict[str, int] = {}  # model -> how many times its process was found dead
        self.children = [] if config.openai is None else [SupervisedProcess(
            "the OpenAI-compatible API", config.openai.argv(server.grpc_port, server.model_repository),
            Path(server.log_file).with_name("openai_api.log"))]

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> Supervisor:
        """Start tritonserver (waiting until it is ready), the front and the watchdog."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.server.start_and_wait()
        self.down = None
        self._start_front()
        for child in self.children:
            child.start()
        self._spawn(self._watchdog, "qwen-triton-watchdog")
        return self

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Whether the public /v2/health/ready answered 200 within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if http_get(f"http://127.0.0.1:{self.http_port}/v2/health/ready", 1.0)[0] == 200:
                return True
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 40.0) -> None:
        """Stop the front and the watchdog, let tritonserver drain and exit, remove what it left."""
        self._stopping.set()
        if self._front is not None:
            self._front.should_exit = True
        with self._acting:
            for child in self.children:
                child.stop()
            code = self.server.stop(timeout)  # it removes the stubs and shared memory it leaves
            self._forget_pid_files()
        for thread in self._threads:
            thread.join(timeout=10)
        log.info("stopped (tritonserver exit code %s)", code)

    def ready(self) -> str | None:
        """None while serving, else why not (the front's /v2/health/ready answers 503 with it)."""
        return self.down

    def deaths(self, model: str) -> int:
        """How many times the model's process (or tritonserver) was found dead: the front fails the
        requests that were under way (Triton 2.51 never answers them)."""
        return self._deaths.get(model, 0) + self._deaths.get("", 0)

    @property
    def http_port(self) -> int:
        return self.config.http_port if self._front is None else self._front.config.port

    # -- the front ---------------------------------------------------------------------------------------

    def _start_front(self) -> None:
        import uvicorn

        app = create_app(FrontConfig(triton_url=self.server.http_url, max_body_bytes=self.config.max_body_bytes,
                                     max_json_depth=self.config.max_json_depth, ready=self.ready,
                                     deaths=self.deaths))
        port = self.config.http_port or free_port()
        self._front = uvicorn.Server(uvicorn.Config(app, host=self.config.host, port=port, log_level="warning",
                                                    timeout_graceful_shutdown=5, lifespan="on"))
        self._spawn(self._front.run, "qwen-triton-front")
        deadline = time.monotonic() + 30
        while not self._front.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- the watchdog ------------------------------------------------------------------------------------

    def _watchdog(self) -> None:
        while not self._stopping.wait(self.config.poll_s):
            with self._acting:
                if self._stopping.is_set():
                    return
                try:
                    self._check()
                except Exception:  # the watchdog must outlive anything it meets
                    log.exception("watchdog step failed")

    def _check(self) -> None:
        if self.server.proc is not None and self.server.proc.poll() is not None:
            self._restart_server(f"tritonserver exited with code {self.server.proc.returncode}")
            return
        for watch in self.watches:
            if watch.poll():
                self._restart_model(watch)
        for child in self.children:
            child.poll()

    def _restart_model(self, watch: EngineWatch) -> None:
        """Unload a model whose process is gone and load it again."""
        reason, model, url = watch.down, watch.model, self.server.http_url
        self._deaths[model] = self._deaths.get(model, 0) + 1
        self.down = f"{reason}; the {model} model is being restarted"
        log.error("%s", self.down)
        http_post(f"{url}/v2/repository/models/{model}/unload", timeout=60)
        status, body = http_post(f"{url}/v2/repository/models/{model}/load", timeout=self.config.reload_timeout_s)
        if status != 200:
            self.down = f"{reason}; restarting the {model} model failed ({status}: {body[:200]!r})"
            log.error("%s", self.down)
            return
        watch.poll()
        self.down = watch.down
        log.warning(f"the {model} model is serving again" if self.down is None else self.down)

    def _restart_server(self, reason: str) -> None:
        """tritonserver died: remove its leftovers and start it again."""
        self.down = f"{reason}; restarting it"
        self._deaths[""] = self._deaths.get("", 0) + 1  # every model's
        log.error("%s", self.down)
        self.server.stop(timeout=5)  # it removes the stubs and shared memory the dead one left
        self._forget_pid_files()
        self.server.start_and_wait()
        self.down = None
        log.warning("tritonserver is serving again")

    def _forget_pid_files(self) -> None:
        for path in self.run_dir.glob("*.pid"):
            path.unlink(missing_ok=True)


def _models(repository: Path) -> list[str]:
    """The models of a repository (the folders holding a config.pbtxt)."""
    return sorted(p.parent.name for p in Path(repository).glob("*/config.pbtxt"))

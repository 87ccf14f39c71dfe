"""A tritonserver process from the project-local install (``python -m qwen_triton.runtime.install``)::

    from qwen_triton.runtime.server import TritonServer
    with TritonServer("tests/fixtures/toy_repo", http_port=0, grpc_port=0, metrics_port=0) as srv:
        requests.post(f"{srv.http_url}/v2/models/echo/generate", json={...})

Port 0 means "pick a free port".  The server runs in its own process session (so it outlives a CLI that
started it and Ctrl-C in the shell does not reach it), with its stdout/stderr in a log file (the previous
one kept as ``.log.1``).  Its command line and environment are :mod:`.launch`'s.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from qwen_triton.wire import env_port, is_ready

from . import launch
from .launch import LATENCY_METRICS, TritonError
from .paths import LOG_DIR, PROJECT_ROOT, default_python, default_triton_dir
from .process import free_port, kill_group, remove_leftovers, tail, terminate
from .state import remove_state, write_state

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LATENCY_METRICS", "TritonError", "TritonServer", "default_python"]


class TritonServer:
    """A tritonserver process from the project-local install.

    ``start()`` launches it, ``wait_ready()`` blocks until ``/v2/health/ready`` is 200 (raising TritonError
    with the log tail if it dies or times out), ``stop()`` terminates it.  Use as a context manager to get
    start + wait_ready on enter and stop on exit.  Ports left None come from ``TRITON_<KIND>_PORT``, else
    8000/8001/8002; ``triton_dir`` None is ``$TRITON_DIR``, else ``<checkout>/.triton``.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        triton_dir: str | os.PathLike | None = None,
        python: str | None = None,
        log_file: str | os.PathLike | None = None,
        pid_file: str | os.PathLike | None = None,
        latency_metrics: str = "auto",
        log_verbose: int = 0,
        extra_args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        startup_timeout: float = 120.0,
        allow_numpy2: bool | None = None,
    ) -> None:
        if latency_metrics not in LATENCY_METRICS:
            raise ValueError(f"latency_metrics must be one of {LATENCY_METRICS}")
        self.model_repository = Path(model_repository).absolute()
        self.triton_dir = Path(default_triton_dir() if triton_dir is None else triton_dir).absolute()
        self._requested = {
            "http": env_port("http") if http_port is None else http_port,
            "grpc": env_port("grpc") if grpc_port is None else grpc_port,
            "metrics": env_port("metrics") if metrics_port is None else metrics_port,
        }
        self.ports = self._pick_ports()
        self.python = python or default_python()
        self.log_file = Path(log_file) if log_file else LOG_DIR / "tritonserver.log"
        self.pid_file = Path(pid_file) if pid_file else None
        self.latency_metrics = latency_metrics
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        if allow_numpy2 is None:
            allow_numpy2 = os.environ.get("TRITON_ALLOW_NUMPY2", "") not in ("", "0")
        self.allow_numpy2 = allow_numpy2
        self.proc: subprocess.Popen | None = None
        self._log_handle = None
        self._python_info: dict | None = None
        # the Python backend's shared memory under a name of this server's, so stop() finds what a crash left
        self.shm_prefix = f"qwen-triton-{uuid.uuid4().hex[:12]}-"

    # ----------------------------------------------------------------------------------------- info
    def _pick_ports(self) -> dict[str, int]:
        return {k: (free_port() if v == 0 else int(v)) for k, v in self._requested.items()}

    @property
    def http_port(self) -> int:
        """The HTTP port (a picked one for port 0)."""
        return self.ports["http"]

    @property
    def grpc_port(self) -> int:
        """The gRPC port (a picked one for port 0)."""
        return self.ports["grpc"]

    @property
    def metrics_port(self) -> int:
        """The metrics port (a picked one for port 0)."""
        return self.ports["metrics"]

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:<http port>``"""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:<grpc port>`` (as tritonclient.grpc wants it)"""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """``http://127.0.0.1:<metrics port>/metrics``"""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """The server's pid once started."""
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        """The tritonserver command line."""
        return launch.server_command(
            self.triton_dir, self.model_repository, self.ports, log_verbose=self.log_verbose,
            metrics=self.metrics_settings(),
            extra_args=[f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}", *self.extra_args],
        )

    def metrics_settings(self) -> list[str]:
        """Latency metric settings to turn on: only those this build knows (it ignores unknown ones)."""
        return launch.metrics_settings(self.triton_dir, self.latency_metrics)

    def environment(self) -> dict[str, str]:
        """os.environ with the venv's bin/ first on PATH and its libpython's dir first on LD_LIBRARY_PATH."""
        return launch.stub_environment(self.python, self.python_info().get("libdir"), self.extra_env)

    def python_info(self) -> dict:
        """What the install's interpreter probe says about self.python (version, LIBDIR, numpy); cached."""
        if self._python_info is None:
            self._python_info = launch.probe(self.python)
        return self._python_info

    # -------------------------------------------------------------------------------------- control
    def check(self) -> None:
        """Raise TritonError if the install, repository or Python environment is unusable."""
        launch.check_install(self.triton_dir, self.model_repository)
        launch.check_python(self.triton_dir, self.python, self.python_info(), self.allow_numpy2)

    def _open_log(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.log_file.exists() and self.log_file.stat().st_size:
            os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
        self._log_handle = open(self.log_file, "ab", buffering=0)  # noqa: SIM115 - closed in stop()

    def start(self) -> TritonServer:
        """Check, then launch tritonserver (not waiting for it); writes the pid/state files if given one."""
        if self.proc is not None and self.proc.poll() is None:
            raise TritonError(f"already running (pid {self.proc.pid})")
        self.check()
        self._open_log()
        cmd = self.command()
        self._log_handle.write(("# " + " ".join(cmd) + "\n").encode())
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            cwd=str(PROJECT_ROOT),
            start_new_session=True,  # own session + process group: killpg reaches the stubs too
        )
        if self.pid_file:
            write_state(self.pid_file, self)
        return self

    def wait_ready(self, timeout: float | None = None) -> TritonServer:
        """Block until ``/v2/health/ready`` is 200; TritonError (with the log tail) if it exits or times out."""
        timeout = self.startup_timeout if timeout is None else timeout
        if self.proc is None:
            raise TritonError("not started")
        deadline = time.monotonic() + timeout
        url = f"{self.http_url}/v2/health/ready"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise TritonError(
                    f"tritonserver exited with code {code} before it was ready; last log lines "
                    f"({self.log_file}):\n{tail(self.log_file)}"
                )
            if is_ready(self.http_url, timeout=1.0):
                return self
            if time.monotonic() > deadline:
                raise TritonError(
                    f"tritonserver (pid {self.proc.pid}) not ready after {timeout:.0f} s at {url}; last log "
                    f"lines ({self.log_file}):\n{tail(self.log_file)}"
                )
            time.sleep(0.2)

    def start_and_wait(self, timeout: float | None = None, retries: int = 1) -> TritonServer:
        """start() + wait_ready(); if a picked free port was taken meanwhile, try again with new ports."""
        for attempt in range(retries + 1):
            self.start()
            try:
                return self.wait_ready(timeout)
            except TritonError as exc:
                self.stop()
                racy = 0 in self._requested.values() and "address already in use" in str(exc).lower()
                if not racy or attempt == retries:
                    raise
                self.ports = self._pick_ports()
        raise AssertionError("unreachable")

    def is_ready(self) -> bool:
        """True while the process runs and answers 200 on ``/v2/health/ready``."""
        return self.proc is not None and self.proc.poll() is None and is_ready(self.http_url)

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, wait up to timeout, SIGKILL the process group, remove leftover stubs and shared memory;
        returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            terminate(self.proc.pid, timeout)
        else:  # server gone; make sure no stub of its session survives
            kill_group(self.proc.pid)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        remove_leftovers(self.proc.pid, self.model_repository, self.shm_prefix)
        if self._log_handle:
            self._log_handle.close()
            self._log_handle = None
        if self.pid_file:
            remove_state(self.pid_file)
        return code

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server's log."""
        return tail(self.log_file, lines)

    def __enter__(self) -> Self:
        return self.start_and_wait()

    def __exit__(self, *exc) -> None:
        self.stop()

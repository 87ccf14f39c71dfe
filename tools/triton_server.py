#!/usr/bin/env python3
"""Start, stop and query the project-local Triton server installed by ``tools/triton_install.py``.

CLI::

    python tools/triton_server.py start  [--model-repository model_repo] [--http-port 8000] [--grpc-port 8001]
                                         [--metrics-port 8002] [--python .venv/bin/python] [--foreground]
                                         [-- extra tritonserver flags]
    python tools/triton_server.py stop
    python tools/triton_server.py status

Ports come from the flags, else ``TRITON_HTTP_PORT`` / ``TRITON_GRPC_PORT`` / ``TRITON_METRICS_PORT``, else
8000/8001/8002; the model repository from ``--model-repository``, else ``TRITON_MODEL_REPO``, else
``<repo>/model_repo``.  ``start`` runs tritonserver in its own process session (so it outlives the CLI and
Ctrl-C in the shell does not reach it), sends its stdout/stderr to ``logs/tritonserver.log`` (the previous
one is kept as ``.log.1``), writes ``logs/tritonserver.pid`` (plain pid) and ``logs/tritonserver.json``
(pid, ports, log path), then waits until ``GET /v2/health/ready`` answers 200.  If the process dies or the
timeout passes first, it prints the tail of the log and exits 1.  ``--foreground`` stays attached and stops
the server on Ctrl-C/SIGTERM (for ``make serve``).

Importable::

    from triton_server import TritonServer      # tools/ on sys.path
    with TritonServer("tests/fixtures/toy_repo", http_port=0, grpc_port=0, metrics_port=0) as srv:
        requests.post(f"{srv.http_url}/v2/models/echo/generate", json={...})

Port 0 means "pick a free port".

Pitfalls (Triton 2.51.0 from nvidia-pytriton 0.7.0):

* The Python-backend stub is an *embedded* CPython: it finds its environment the way ``python3`` would, by
  searching PATH for ``python3`` and reading ``pyvenv.cfg`` next to it.  So the venv's ``bin/`` goes first on
  PATH -- the *unresolved* venv path (``.venv/bin``), not the interpreter the ``python`` symlink points to,
  or the stub gets the base interpreter's site-packages without numpy/torch.
* The stub links ``libpython3.X.so.1.0`` by soname; with several builds of the same minor version installed
  (here pyenv 3.11.7 and Debian's 3.11.2 in /usr/lib/x86_64-linux-gnu) the wrong one loads unless that
  Python's ``sysconfig`` LIBDIR is first on LD_LIBRARY_PATH.  The stub's RPATH (not RUNPATH) only points at
  the wheel's own libs folder, which has no libpython3.X for X < 13, so LD_LIBRARY_PATH decides.
* numpy 2 in that environment breaks the stub: the runtime notes saw every output built from a numpy array
  fail with "output tensor shape does not match size of output"; here (numpy 2.4.6, pyenv 3.11.7) it is
  worse: the stub aborts on the first BYTES *input* ("terminate called after throwing an instance of
  'pybind11::error_already_set' ... unpack_from requires a buffer of at least 16843013 bytes") and every
  request then gets 400 "Stub process 'echo_0_0' is not healthy".  So ``start`` refuses an environment with
  numpy >= 2 unless ``--allow-numpy2`` (e.g. models that only emit DLPack tensors and take no BYTES).
* Without the venv's bin/ on PATH the stub runs the base interpreter: "ModuleNotFoundError: No module named
  'numpy'" and, with ``--exit-on-error`` (default), the server exits: "failed to load all models".
* On a CPU machine the ensemble logs "unable to create stream for toy_ensemble: CUDA driver version is
  insufficient for CUDA runtime version" and loads anyway: harmless.
* HTTP ``/generate`` on a request that yields several responses answers status **200** with
  ``{"error": "generate expects model to produce exactly 1 response, ..."}``: check the body, not only the
  status.  A request the model rejects before its first response gets 400 with the model's message (on
  ``/generate_stream`` as ``data: {"error": ...}`` under 400).
* tritonclient's gRPC stream calls ``callback(result=..., error=...)`` by keyword; after an error response no
  final (empty) response follows, even with ``enable_empty_final_response=True``.  A decoupled Python model
  that ends with ``send(flags=FINAL)`` gives an empty final response, but through the ensemble the final
  flag arrives on the *last data response* (4 responses for 4 characters, not 5): read the data of every
  response, then check ``triton_final_response``.
* ``stop`` takes 3-5 s even when idle: tritonserver polls its models once a second while shutting down.
* ``--metrics-config histogram_latencies=true`` is silently *accepted* by 2.51.0 but does nothing: this build
  has no ``nv_inference_first_response_histogram_ms``.  ``--latency-metrics auto`` (default) passes it only
  if the install's marker says the build knows it, else ``summary_latencies=true`` (which 2.51 has:
  ``nv_inference_request_summary_us`` etc., quantiles 0.5/0.9/0.95/0.99/0.999).  TTFT must be measured
  client-side.
* On a machine without a GPU the log shows "CudaDriverHelper has not been initialized", "Failed to initialize
  NVML" and "DCGM unable to start": harmless.
* SIGTERM makes tritonserver unload the models and wait for in-flight requests (``--exit-timeout-secs``,
  30 s by default) before it exits; ``stop`` waits, then SIGKILLs the whole process group, which also takes
  any orphaned ``triton_python_backend_stub`` processes with it.
* Picking a free port by binding port 0 and closing it is racy; TritonServer retries once with new ports if
  the server dies with "address already in use".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT) not in sys.path:  # qwen_triton from this checkout where it is not installed (a bare python3)
    sys.path.append(str(ROOT))
import triton_install

from qwen_triton.wire import env_port, http_get, is_ready

DEFAULT_TRITON_DIR = Path(os.environ.get("TRITON_DIR", ROOT / ".triton"))
DEFAULT_LOG_DIR = ROOT / "logs"
LATENCY_METRICS = ("auto", "histogram", "summary", "none")


_PYTHON_INFO: dict[str, dict] = {}


class TritonError(RuntimeError):
    """Server failed to start / become ready; message includes the log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_python() -> str:
    """The venv's interpreter (unresolved path!) if there is one, else this interpreter."""
    env = os.environ.get("TRITON_PYTHON")
    if env:
        return env
    venv = ROOT / ".venv" / "bin" / "python"
    if venv.exists():
        return str(venv)
    if os.environ.get("VIRTUAL_ENV"):
        return str(Path(os.environ["VIRTUAL_ENV"]) / "bin" / "python")
    return sys.executable


def tail(path: Path, lines: int = 60) -> str:
    try:
        data = Path(path).read_bytes()[-64 * 1024 :].decode("utf-8", "replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])


def _is_tritonserver(pid: int) -> bool:
    """True if pid is alive and is a tritonserver (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc: trust the pid
    return b"tritonserver" in cmdline.split(b"\0")[0]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def terminate(pid: int, timeout: float = 40.0, pgid: int | None = None) -> bool:
    """SIGTERM pid, wait up to timeout, then SIGKILL its process group. True if it had to kill."""
    pgid = pid if pgid is None else pgid
    killed = False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap if it is our child
        if not _pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        killed = True
    # Whatever remains of the session (the server after the timeout, stray stubs) gets SIGKILL.
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        killed = killed or _pid_alive(pid)
        for _ in range(50):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not _group_alive(pgid):
                break
            time.sleep(0.1)
    return killed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class TritonServer:
    """A tritonserver process from the project-local install.

    ``start()`` launches it, ``wait_ready()`` blocks until ``/v2/health/ready`` is 200 (raising TritonError
    with the log tail if it dies or times out), ``stop()`` terminates it.  Use as a context manager to get
    start + wait_ready on enter and stop on exit.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        triton_dir: str | os.PathLike = DEFAULT_TRITON_DIR,
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
        self.model_repository = Path(model_repository).absolute()
        self.triton_dir = Path(triton_dir).absolute()
        self._requested = {
            "http": env_port("http") if http_port is None else http_port,
            "grpc": env_port("grpc") if grpc_port is None else grpc_port,
            "metrics": env_port("metrics") if metrics_port is None else metrics_port,
        }
        self.ports = self._pick_ports()
        self.python = python or default_python()
        self.log_file = Path(log_file) if log_file else DEFAULT_LOG_DIR / "tritonserver.log"
        self.pid_file = Path(pid_file) if pid_file else None
        if latency_metrics not in LATENCY_METRICS:
            raise ValueError(f"latency_metrics must be one of {LATENCY_METRICS}")
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

    # ----------------------------------------------------------------------------------------- info
    def _pick_ports(self) -> dict[str, int]:
        return {k: (free_port() if v == 0 else int(v)) for k, v in self._requested.items()}

    @property
    def http_port(self) -> int:
        return self.ports["http"]

    @property
    def grpc_port(self) -> int:
        return self.ports["grpc"]

    @property
    def metrics_port(self) -> int:
        return self.ports["metrics"]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        binary = triton_install.tritonserver_binary(self.triton_dir)
        cmd = [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={triton_install.backends_dir(self.triton_dir)}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
        ]
        cmd += [f"--metrics-config={setting}=true" for setting in self.metrics_settings()]
        return cmd + self.extra_args

    def metrics_settings(self) -> list[str]:
        """Latency metric settings to turn on: only those this build knows (it ignores unknown ones)."""
        if self.latency_metrics == "none":
            return []
        marker = triton_install.read_marker(self.triton_dir) or {}
        known = marker.get("metrics_settings")
        if known is None:
            known = triton_install.supported_metrics_settings(self.triton_dir)
        wanted = {
            "auto": ["histogram_latencies"] if "histogram_latencies" in known else ["summary_latencies"],
            "histogram": ["histogram_latencies"],
            "summary": ["summary_latencies"],
        }[self.latency_metrics]
        return [w for w in wanted if w in known]

    def environment(self) -> dict[str, str]:
        """os.environ with the venv's bin/ first on PATH and its libpython's dir first on LD_LIBRARY_PATH."""
        env = dict(os.environ)
        env.update(self.extra_env)
        venv_bin = str(Path(self.python).absolute().parent)  # NOT resolved: keep the venv, not its base
        env["PATH"] = os.pathsep.join([venv_bin] + [p for p in env.get("PATH", "").split(os.pathsep) if p])
        libdir = self.python_info().get("libdir")
        if libdir:
            parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
            env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + parts)
        env.pop("PYTHONHOME", None)  # would override the venv lookup in the stub
        return env

    def python_info(self) -> dict:
        """What ``triton_install.probe_python`` says about self.python (version, LIBDIR, numpy); cached."""
        if self.python not in _PYTHON_INFO:
            try:
                _PYTHON_INFO[self.python] = triton_install.probe_python(self.python)
            except triton_install.InstallError as exc:
                raise TritonError(str(exc)) from None
        return _PYTHON_INFO[self.python]

    # -------------------------------------------------------------------------------------- control
    def check(self) -> None:
        """Raise TritonError if the install, repository or Python environment is unusable."""
        if not triton_install.is_installed(self.triton_dir):
            raise TritonError(
                f"Triton is not installed in {self.triton_dir}: run `make triton-install` "
                "(python tools/triton_install.py)"
            )
        if not self.model_repository.is_dir():
            raise TritonError(f"model repository {self.model_repository} does not exist")
        info = self.python_info()
        marker = triton_install.read_marker(self.triton_dir) or {}
        if marker.get("python_version") != info["version"]:
            raise TritonError(
                f"{self.triton_dir} holds the Python {marker.get('python_version')} stub but {self.python} "
                f"is "
                f"Python {info['version']}: run tools/triton_install.py --python {self.python} --force"
            )
        warning = triton_install.numpy_warning(info)
        if warning and info.get("numpy") and not self.allow_numpy2:
            raise TritonError(
                warning + " (allow_numpy2=True / --allow-numpy2 / TRITON_ALLOW_NUMPY2=1 to try anyway)"
            )
        if warning:
            print(f"[triton-server] WARNING: {warning}", file=sys.stderr)

    def start(self) -> TritonServer:
        if self.proc is not None and self.proc.poll() is None:
            raise TritonError(f"already running (pid {self.proc.pid})")
        self.check()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.log_file.exists() and self.log_file.stat().st_size:
            os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
        self._log_handle = open(self.log_file, "ab", buffering=0)  # noqa: SIM115 - closed in stop()
        cmd = self.command()
        self._log_handle.write(("# " + " ".join(cmd) + "\n").encode())
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            cwd=str(ROOT),
            start_new_session=True,  # own session + process group: killpg reaches the stubs too
        )
        if self.pid_file:
            write_state(self.pid_file, self)
        return self

    def wait_ready(self, timeout: float | None = None) -> TritonServer:
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
        return (
            self.proc is not None
            and self.proc.poll() is None
            and is_ready(self.http_url)
        )

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, wait up to timeout, SIGKILL the process group; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            terminate(self.proc.pid, timeout)
        else:  # server gone; make sure no stub of its session survives
            if _group_alive(self.proc.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        if self._log_handle:
            self._log_handle.close()
            self._log_handle = None
        if self.pid_file:
            remove_state(self.pid_file)
        return code

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_file, lines)

    def __enter__(self) -> Self:
        return self.start_and_wait()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------ state files
def state_file(pid_file: Path) -> Path:
    return Path(pid_file).with_suffix(".json")


def write_state(pid_file: Path, server: TritonServer) -> None:
    pid_file = Path(pid_file)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{server.pid}\n")
    state = {
        "pid": server.pid,
        "http_port": server.http_port,
        "grpc_port": server.grpc_port,
        "metrics_port": server.metrics_port,
        "model_repository": str(server.model_repository),
        "log_file": str(server.log_file),
        "python": server.python,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    state_file(pid_file).write_text(json.dumps(state, indent=2) + "\n")


def read_state(pid_file: Path) -> dict | None:
    try:
        pid = int(Path(pid_file).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        state = json.loads(state_file(pid_file).read_text())
    except (OSError, ValueError):
        state = {}
    state["pid"] = pid
    return state


def remove_state(pid_file: Path) -> None:
    for p in (Path(pid_file), state_file(pid_file)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


# -------------------------------------------------------------------------------------------------- CLI
def cmd_start(args) -> int:
    existing = read_state(args.pid_file)
    if existing and _is_tritonserver(existing["pid"]):
        same = (
            existing.get("model_repository") == str(args.model_repository.absolute())
            and existing.get("http_port") == args.http_port
        )
        if same and is_ready(f"127.0.0.1:{args.http_port}"):
            pid = existing["pid"]
            print(f"[triton-server] already running and ready (pid {pid}, http port {args.http_port})")
            return 0
        print(
            f"[triton-server] already running (pid {existing['pid']}, http port {existing.get('http_port')}, "
            f"repository {existing.get('model_repository')}); `stop` it first"
        )
        return 1
    if existing:
        remove_state(args.pid_file)  # stale
    extra = list(args.extra)
    if extra and extra[0] == "--":
        extra = extra[1:]
    server = TritonServer(
        args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        triton_dir=args.triton_dir,
        python=args.python,
        log_file=args.log_file,
        pid_file=args.pid_file,
        latency_metrics=args.latency_metrics,
        allow_numpy2=args.allow_numpy2 or None,
        log_verbose=args.log_verbose,
        extra_args=extra,
        startup_timeout=args.timeout,
    )
    try:
        server.start()
        print(
            f"[triton-server] started pid {server.pid}; log {server.log_file}; waiting for "
            f"{server.http_url}/v2/health/ready ...",
            flush=True,
        )
        t0 = time.monotonic()
        server.wait_ready()
    except TritonError as exc:
        print(f"[triton-server] ERROR: {exc}", file=sys.stderr)
        server.stop(timeout=10)
        return 1
    print(
        f"[triton-server] ready in {time.monotonic() - t0:.1f} s: HTTP {server.http_url}  "
        f"gRPC {server.grpc_url}  metrics {server.metrics_url}",
        flush=True,
    )
    if not args.foreground:
        return 0

    stopping = {"sig": None}

    def on_signal(signum, _frame):
        stopping["sig"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while stopping["sig"] is None and server.proc.poll() is None:
        time.sleep(0.5)
    if server.proc.poll() is not None:
        print(
            f"[triton-server] tritonserver exited with {server.proc.returncode}; last log lines:\n"
            f"{server.log_tail()}",
            file=sys.stderr,
        )
        server.stop()
        return 1
    print("[triton-server] stopping ...", flush=True)
    server.stop()
    return 0


def cmd_stop(args) -> int:
    state = read_state(args.pid_file)
    if not state:
        print(f"[triton-server] not running (no pid file {args.pid_file})")
        return 0
    pid = state["pid"]
    if not _is_tritonserver(pid):
        print(f"[triton-server] not running (stale pid file, pid {pid})")
        remove_state(args.pid_file)
        return 0
    print(f"[triton-server] stopping pid {pid} ...", flush=True)
    killed = terminate(pid, args.timeout)
    remove_state(args.pid_file)
    print(f"[triton-server] stopped{' (SIGKILL)' if killed else ''}")
    return 0


def cmd_status(args) -> int:
    state = read_state(args.pid_file)
    if not state or not _is_tritonserver(state["pid"]):
        print(json.dumps({"running": False, "pid_file": str(args.pid_file)}))
        return 1
    http = state.get("http_port", env_port("http"))
    ready = is_ready(f"127.0.0.1:{http}")
    live, _ = http_get(f"http://127.0.0.1:{http}/v2/health/live")
    out = dict(state, running=True, live=live == 200, ready=ready)
    code, body = http_post_json(f"http://127.0.0.1:{http}/v2/repository/index", {})
    if code == 200:
        with contextlib.suppress(ValueError):
            out["models"] = {m["name"]: m.get("state") for m in json.loads(body)}
    print(json.dumps(out, indent=2))
    return 0 if ready else 2


def http_post_json(url: str, payload: dict, timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Run the project-local Triton server (see tools/triton_install.py)."
    )
    p.add_argument(
        "--pid-file",
        type=Path,
        default=Path(os.environ.get("TRITON_PID_FILE", DEFAULT_LOG_DIR / "tritonserver.pid")),
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("start", help="start tritonserver in the background and wait until it is ready")
    s.add_argument(
        "--model-repository",
        type=Path,
        default=Path(os.environ.get("TRITON_MODEL_REPO", ROOT / "model_repo")),
    )
    s.add_argument("--http-port", type=int, default=env_port("http"))
    s.add_argument("--grpc-port", type=int, default=env_port("grpc"))
    s.add_argument("--metrics-port", type=int, default=env_port("metrics"))
    s.add_argument("--triton-dir", type=Path, default=DEFAULT_TRITON_DIR)
    s.add_argument(
        "--python", default=default_python(), help="Python environment the Python-backend models run in"
    )
    s.add_argument("--log-file", type=Path, default=DEFAULT_LOG_DIR / "tritonserver.log")
    s.add_argument("--log-verbose", type=int, default=int(os.environ.get("TRITON_LOG_VERBOSE", "0")))
    s.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("TRITON_START_TIMEOUT", "300")),
        help="seconds to wait for /v2/health/ready",
    )
    s.add_argument(
        "--latency-metrics",
        choices=LATENCY_METRICS,
        default=os.environ.get("TRITON_LATENCY_METRICS", "auto"),
        help="auto: --metrics-config histogram_latencies=true if this build has it "
        "(2.51 does not), "
        "else summary_latencies=true",
    )
    s.add_argument("--allow-numpy2", action="store_true", help="start even if the environment has numpy >= 2")
    s.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the server")
    s.add_argument("extra", nargs=argparse.REMAINDER, help="-- then extra tritonserver flags")
    s.set_defaults(func=cmd_start)

    t = sub.add_parser("stop", help="SIGTERM the server, wait, then SIGKILL")
    t.add_argument("--timeout", type=float, default=40.0)
    t.set_defaults(func=cmd_stop)

    u = sub.add_parser(
        "status", help="print pid, ports and readiness (exit 0 ready, 1 not running, 2 not ready)"
    )
    u.set_defaults(func=cmd_status)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

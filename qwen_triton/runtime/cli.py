"""Start, stop and query the project-local Triton server in the background::

    python -m qwen_triton.runtime [--pid-file logs/tritonserver.pid]
        start  [--model-repository model_repo] [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]
               [--python .venv/bin/python] [--openai-port 9000] [--foreground] [-- extra tritonserver flags]
        stop
        status

(``python tools/triton_server.py ...`` is the same.)  Ports come from the flags, else ``TRITON_HTTP_PORT`` /
``TRITON_GRPC_PORT`` / ``TRITON_METRICS_PORT``, else 8000/8001/8002; the model repository from
``--model-repository``, else ``TRITON_MODEL_REPO``, else ``<repo>/model_repo``.  ``start`` runs
tritonserver in its own process session, sends its output to ``logs/tritonserver.log``, writes
``logs/tritonserver.pid`` and ``logs/tritonserver.json`` (:mod:`.state`), then waits until
``GET /v2/health/ready`` answers 200.  If the process dies or the timeout passes first, it prints the tail
of the log and exits 1.  ``--foreground`` stays attached and stops the server on Ctrl-C/SIGTERM.
``--openai-port`` also runs the OpenAI-compatible API (``python -m qwen_triton.openai_api``) on that port,
supervised like the rest; ``start`` then also waits until its ``/health`` answers 200.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from qwen_triton.wire import env_port, http_get, http_post, is_ready

from .launch import LATENCY_METRICS, TritonError
from .paths import LOG_DIR, MODEL_REPO, default_python, default_triton_dir
from .process import is_tritonserver, remove_leftovers, tail, terminate
from .server import TritonServer
from .state import read_state, remove_state, write_supervisor_state


# -------------------------------------------------------------------------------------------------- start
def _already_running(args) -> int | None:
    """The exit code if a server from the pid file is still running (0: this very one is ready), else None
    (and a stale pid file is removed)."""
    existing = read_state(args.pid_file)
    if existing and _is_ours(existing["pid"]):
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
    return None


def _is_ours(pid: int) -> bool:
    """Whether `pid` is a tritonserver or a supervisor of ours (`python -m qwen_triton.runtime`)."""
    if is_tritonserver(pid):
        return True
    try:
        return b"qwen_triton.runtime" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _server(args, supervised: bool = False) -> TritonServer:
    extra = list(args.extra)
    if extra and extra[0] == "--":
        extra = extra[1:]
    return TritonServer(
        args.model_repository,
        http_port=0 if supervised else args.http_port,  # supervised: Triton's own HTTP is internal
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        triton_dir=args.triton_dir,
        python=args.python,
        log_file=args.log_file,
        pid_file=None if supervised else args.pid_file,
        latency_metrics=args.latency_metrics,
        allow_numpy2=args.allow_numpy2 or None,
        log_verbose=args.log_verbose,
        extra_args=extra,
        startup_timeout=args.timeout,
    )


def _stay_attached(server: TritonServer) -> int:
    """Wait until SIGINT/SIGTERM (then stop the server: 0) or until the server exits by itself (1)."""
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


def cmd_start(args) -> int:
    """``start``: the supervisor (tritonserver behind the HTTP front, restarted when it or its engine dies)
    in the background, once it is ready; ``--foreground`` runs it here until a signal. ``--unsupervised``:
    tritonserver alone, its own HTTP on the public port (no front, no restarts)."""
    running = _already_running(args)
    if running is not None:
        return running
    if args.unsupervised:
        return _start_unsupervised(args)
    if args.foreground:
        return cmd_supervise(args)
    log = args.log_file.with_name("supervisor.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "qwen_triton.runtime", "--pid-file", str(args.pid_file), "supervise",
            *_start_argv(args)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    print(f"[triton-server] supervisor pid {proc.pid}; log {log}; waiting for readiness ...", flush=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if is_ready(f"127.0.0.1:{args.http_port}") and _openai_ready(args):
            openai = f"  OpenAI API http://127.0.0.1:{args.openai_port}/v1" if args.openai_port else ""
            print(f"[triton-server] ready: HTTP http://127.0.0.1:{args.http_port} (front)  "
                  f"gRPC 127.0.0.1:{args.grpc_port}  metrics :{args.metrics_port}{openai}", flush=True)
            return 0
        time.sleep(0.3)
    print(f"[triton-server] ERROR: not ready (supervisor {'exited' if proc.poll() is not None else 'timed out'});"
          f" last lines of {log}:\n{tail(log)}", file=sys.stderr)
    if proc.poll() is None:
        terminate(proc.pid, 30)
    return 1


def _openai_ready(args) -> bool:
    """True without the OpenAI API, else whether its /health answers 200 (the engine model is ready)."""
    return not args.openai_port or http_get(f"http://127.0.0.1:{args.openai_port}/health", 1.0)[0] == 200


def _start_argv(args) -> list[str]:
    """The start options again, for the background supervisor's command line."""
    argv = ["--model-repository", str(args.model_repository), "--http-port", str(args.http_port),
            "--grpc-port", str(args.grpc_port), "--metrics-port", str(args.metrics_port), "--host", args.host,
            "--triton-dir", str(args.triton_dir), "--python", args.python, "--log-file", str(args.log_file),
            "--log-verbose", str(args.log_verbose), "--timeout", str(args.timeout),
            "--latency-metrics", args.latency_metrics]
    argv += ["--openai-port", str(args.openai_port)] if args.openai_port else []
    return argv + (["--allow-numpy2"] if args.allow_numpy2 else []) + list(args.extra)


def cmd_supervise(args) -> int:
    """Run the supervisor in this process until SIGINT/SIGTERM (it writes the pid/state files)."""
    from .child import OpenAIService
    from .supervisor import Supervisor, SupervisorConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request forwarded by the front
    supervisor = Supervisor(_server(args, supervised=True),
                            SupervisorConfig(host=args.host, http_port=args.http_port,
                                             run_dir=args.log_file.parent / "run",
                                             openai=OpenAIService(args.openai_port, args.host) if args.openai_port
                                             else None))
    try:
        supervisor.start()
    except TritonError as exc:
        print(f"[triton-server] ERROR: {exc}", file=sys.stderr)
        supervisor.stop(timeout=10)
        return 1
    write_supervisor_state(args.pid_file, supervisor)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    print("[triton-server] stopping ...", flush=True)
    supervisor.stop()
    remove_state(args.pid_file)
    return 0


def _start_unsupervised(args) -> int:
    server = _server(args)
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
    return _stay_attached(server) if args.foreground else 0


# ------------------------------------------------------------------------------------------ stop, status
def cmd_stop(args) -> int:
    """``stop``: SIGTERM the server of the pid file, wait, then SIGKILL its process group."""
    state = read_state(args.pid_file)
    if not state:
        print(f"[triton-server] not running (no pid file {args.pid_file})")
        return 0
    pid = state["pid"]
    if not _is_ours(pid):
        print(f"[triton-server] not running (stale pid file, pid {pid})")
        remove_state(args.pid_file)
        return 0
    print(f"[triton-server] stopping pid {pid} ...", flush=True)
    killed = terminate(pid, args.timeout)
    if state.get("supervised"):  # a supervisor killed before it stopped its tritonserver (own session)
        _stop_orphans(state)
    remove_state(args.pid_file)
    print(f"[triton-server] stopped{' (SIGKILL)' if killed else ''}")
    return 0


def _stop_orphans(state: dict) -> None:
    """What a killed supervisor left: its tritonserver (its own process group), that one's stubs and
    shared memory."""
    server_pid = state.get("tritonserver_pid")
    if server_pid and is_tritonserver(server_pid):
        print(f"[triton-server] stopping the supervisor's tritonserver (pid {server_pid}) ...", flush=True)
        terminate(server_pid, 10)
    if state.get("model_repository") and state.get("shm_prefix"):
        remove_leftovers(server_pid, Path(state["model_repository"]), state["shm_prefix"])


def cmd_status(args) -> int:
    """``status``: print the state as JSON with liveness, readiness and the models' states; exit 0 when
    ready, 1 when not running, 2 when running but not ready."""
    state = read_state(args.pid_file)
    if not state or not _is_ours(state["pid"]):
        print(json.dumps({"running": False, "pid_file": str(args.pid_file)}))
        return 1
    http = state.get("http_port", env_port("http"))
    ready = is_ready(f"127.0.0.1:{http}")
    live, _ = http_get(f"http://127.0.0.1:{http}/v2/health/live")
    out = dict(state, running=True, live=live == 200, ready=ready)
    if state.get("openai_port"):
        out["openai_ready"] = http_get(f"http://127.0.0.1:{state['openai_port']}/health", 1.0)[0] == 200
    triton_http = state.get("triton_http_port", http)  # the repository API is not served by the front
    code, body = http_post(f"http://127.0.0.1:{triton_http}/v2/repository/index", {})
    if code == 200:
        with contextlib.suppress(ValueError):
            out["models"] = {m["name"]: m.get("state") for m in json.loads(body)}
    print(json.dumps(out, indent=2))
    return 0 if ready else 2


# ------------------------------------------------------------------------------------------------ parser
def _add_start_parser(sub) -> None:
    s = sub.add_parser("start", help="start tritonserver in the background and wait until it is ready")
    s.add_argument("--model-repository", type=Path, default=Path(os.environ.get("TRITON_MODEL_REPO", MODEL_REPO)))
    s.add_argument("--http-port", type=int, default=env_port("http"))
    s.add_argument("--grpc-port", type=int, default=env_port("grpc"))
    s.add_argument("--metrics-port", type=int, default=env_port("metrics"))
    s.add_argument("--triton-dir", type=Path, default=default_triton_dir())
    s.add_argument("--python", default=default_python(), help="Python environment the Python-backend models run in")
    s.add_argument("--log-file", type=Path, default=LOG_DIR / "tritonserver.log")
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
        help="auto: --metrics-config histogram_latencies=true if this build has it (2.51 does not), "
        "else summary_latencies=true",
    )
    s.add_argument("--allow-numpy2", action="store_true", help="start even if the environment has numpy >= 2")
    s.add_argument("--host", default=os.environ.get("TRITON_HOST", "127.0.0.1"),
                   help="address the public ports listen on (127.0.0.1; 0.0.0.0 to serve other machines)")
    s.add_argument("--openai-port", type=int, default=None,
                   help="also serve the OpenAI-compatible API on this port (python -m qwen_triton.openai_api; "
                        "API key from $QWEN_TRITON_API_KEY)")
    s.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the server")
    s.add_argument("--unsupervised", action="store_true",
                   help="tritonserver alone: its own HTTP on the public port, no front, no restarts")
    s.add_argument("extra", nargs=argparse.REMAINDER, help="-- then extra tritonserver flags")
    s.set_defaults(func=cmd_start)
    v = sub.add_parser("supervise", parents=[s], add_help=False, conflict_handler="resolve",
                       help="run the supervisor in the foreground (what `start` runs in the background)")
    v.set_defaults(func=cmd_supervise)


def parser() -> argparse.ArgumentParser:
    """The ``start|stop|status`` argument parser (defaults from the environment, read now)."""
    p = argparse.ArgumentParser(
        prog="python -m qwen_triton.runtime",
        description="Run the project-local Triton server (installed by python -m qwen_triton.runtime.install; "
        "see docs/triton-runtime.md).",
    )
    p.add_argument(
        "--pid-file", type=Path, default=Path(os.environ.get("TRITON_PID_FILE", LOG_DIR / "tritonserver.pid"))
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_start_parser(sub)
    t = sub.add_parser("stop", help="SIGTERM the server, wait, then SIGKILL")
    t.add_argument("--timeout", type=float, default=40.0)
    t.set_defaults(func=cmd_stop)
    u = sub.add_parser("status", help="print pid, ports and readiness (exit 0 ready, 1 not running, 2 not ready)")
    u.set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = parser().parse_args(argv)
    return args.func(args)

"""What the soak test (``python -m loadtest.soak``) watches on the server side, and the faults it injects.

* processes, through /proc: the tritonserver listening on the ports, its ``triton_python_backend_stub``
  children (one per model instance, labelled by model), the HTTP front when one serves the HTTP port, their
  resident memory (VmRSS), the engine's stub;
* the metrics port: the engine's KV-pool and request gauges and its counters, and waiting for it to idle;
* readiness: a thread polling ``/v2/health/ready`` every half second, recording the gaps;
* faults: SIGKILL to the engine's stub, SIGTERM to tritonserver, waiting for a process to exit.

Linux only (/proc).  No state outside the objects.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from qwen_triton import wire
from qwen_triton.serving import contract as c

PROC = Path("/proc")
STUB = "triton_python_backend_stub"
ENGINE_MARK = f"/{c.ENGINE}/1/model.py"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def cmdline(pid: int) -> list[str]:
    """A process's arguments ([] when it is gone)."""
    return [a.decode(errors="replace") for a in _read(PROC / str(pid) / "cmdline").split(b"\0") if a]


def alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    if not pid:
        return False
    stat = _read(PROC / str(pid) / "stat")
    return bool(stat) and stat.rsplit(b")", 1)[-1].split()[0] != b"Z"


def _pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    out = []
    for child in _pids():
        stat = _read(PROC / str(child) / "stat")
        fields = stat.rsplit(b")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid).encode() and fields[0] != b"Z":
            out.append(child)
    return sorted(out)


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        for line in _read(PROC / "net" / table).decode().splitlines()[1:]:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def listeners(port: int) -> list[int]:
    """The processes with a socket listening on TCP ``port`` (of those this user may look into)."""
    inodes, found = {f"socket:[{i}]" for i in _listening_inodes(port)}, []
    for pid in _pids() if inodes else ():
        if _fd_links(pid) & inodes:
            found.append(pid)
    return found


def _fd_links(pid: int) -> set[str]:
    """What the open file descriptors of ``pid`` point to (those still open while read)."""
    links = set()
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return links
    for fd in fds:
        try:
            links.add(os.readlink(fd))
        except OSError:
            continue
    return links


def is_tritonserver(pid: int) -> bool:
    """Whether ``pid`` runs the tritonserver binary."""
    args = cmdline(pid)
    return bool(args) and Path(args[0]).name == "tritonserver"


def parent(pid: int) -> int | None:
    """The parent's pid (None when ``pid`` is gone)."""
    fields = _read(PROC / str(pid) / "stat").rsplit(b")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 else None


def is_ancestor(ancestor: int, pid: int) -> bool:
    """Whether ``ancestor`` is a parent, grandparent... of ``pid``."""
    seen = 0
    while pid and pid > 1 and seen < 64:
        pid, seen = parent(pid) or 0, seen + 1
        if pid == ancestor:
            return True
    return False


def label(pid: int) -> str:
    """``tritonserver``, or ``stub:<model>`` for a Python backend stub (``proc:<name>`` otherwise)."""
    args = cmdline(pid)
    if args and args[0].endswith(STUB) and len(args) > 1:
        parts = Path(args[1]).parts
        return f"stub:{parts[-3]}" if len(parts) >= 3 else f"stub:{args[1]}"
    name = Path(args[0]).name if args else "?"
    return "tritonserver" if name == "tritonserver" else f"proc:{name}"


def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MB (None when it is gone)."""
    m = re.search(rb"VmRSS:\s+(\d+)\s+kB", _read(PROC / str(pid) / "status"))
    return int(m.group(1)) / 1024 if m else None


def engine_stub(server_pid: int) -> int | None:
    """The engine model's stub process (``.../tensorrt_llm/1/model.py`` in its command line)."""
    return next((p for p in children(server_pid) if any(ENGINE_MARK in a for a in cmdline(p))), None)


def exit_timeout(server_pid: int, default: float = 30.0) -> float:
    """The server's ``--exit-timeout-secs`` (Triton's default is 30 s)."""
    for arg in cmdline(server_pid):
        if arg.startswith("--exit-timeout-secs="):
            return float(arg.split("=", 1)[1])
    return default


def wait_exit(pid: int, timeout: float) -> float | None:
    """Seconds until ``pid`` exited, or None if it still runs after ``timeout``."""
    start = time.monotonic()
    while alive(pid):
        if time.monotonic() - start > timeout:
            return None
        time.sleep(0.1)
    return time.monotonic() - start


def send_signal(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to one process (not its group)."""
    os.kill(pid, sig)


class ServerProbe:
    """One server seen from outside: its processes and its metrics port.  tritonserver is the process
    listening on the gRPC (else metrics, else HTTP) port, unless ``server_pid`` is given; the process on
    the HTTP port, when it is not tritonserver, is the HTTP front (with a supervisor: its parent)."""

    def __init__(self, http_url: str, grpc_url: str, metrics_url: str, server_pid: int | None = None):
        self.http_url, self.metrics_url = http_url.rstrip("/"), metrics_url
        self.ports = [wire.split_url(u, wire.DEFAULT_PORTS[k])[1]
                      for k, u in (("grpc", grpc_url), ("metrics", metrics_url), ("http", http_url))]
        self.fixed_pid = server_pid

    def server_pid(self) -> int | None:
        """The tritonserver's pid (looked up again each call, so a restarted server is found)."""
        if self.fixed_pid:
            return self.fixed_pid
        return next((p for port in self.ports for p in listeners(port) if is_tritonserver(p)), None)

    def front_pid(self) -> int | None:
        """The process serving the public HTTP port when that is not tritonserver, else None."""
        return next((p for p in listeners(self.ports[2]) if not is_tritonserver(p)), None)

    def top_pid(self) -> int | None:
        """The process that stops the whole stack: the front when it is tritonserver's ancestor (a
        supervisor), else tritonserver."""
        server, front = self.server_pid(), self.front_pid()
        return front if front and server and is_ancestor(front, server) else server

    def processes(self) -> dict[str, int]:
        """{label: pid} of the front, the server and its stubs (a label taken twice gets the pid appended)."""
        out: dict[str, int] = {}
        front, pid = self.front_pid(), self.server_pid()
        if front:
            out["front"] = front
        if pid is None:
            return out
        out["tritonserver"] = pid
        for child in children(pid):
            name = label(child)
            out[name if name not in out else f"{name}#{child}"] = child
        return out

    def rss(self) -> dict[str, float]:
        """{label: resident MB} of the server and every stub."""
        return {name: round(mb, 1) for name, pid in self.processes().items() if (mb := rss_mb(pid)) is not None}

    def metrics(self) -> dict[str, dict[str, float]] | None:
        """The engine's gauges and counters: {"kv": ..., "requests": ..., "engine": ...}; None if the
        metrics port did not answer."""
        families = wire.fetch_metrics(self.metrics_url)
        if families is None:
            return None
        return {"kv": wire.metric_values(families, c.METRIC_KV_BLOCKS, model=c.ENGINE),
                "requests": wire.metric_values(families, c.METRIC_REQUESTS, model=c.ENGINE),
                "engine": wire.metric_values(families, c.METRIC_ENGINE, model=c.ENGINE)}

    def wait_idle(self, timeout: float) -> dict[str, Any]:
        """Poll until the KV pool is all free and no request is active or waiting (or ``timeout``);
        the last snapshot, with ``idle`` and ``waited_s``."""
        start, snap = time.monotonic(), None
        while True:
            snap = self.metrics()
            idle = snap is not None and is_idle(snap)
            if idle or time.monotonic() - start > timeout:
                return {"idle": idle, "waited_s": round(time.monotonic() - start, 2), "metrics": snap}
            time.sleep(0.2)

    def model_parameter(self, model: str, key: str) -> str | None:
        """A ``parameters`` value of a model's config (``GET /v2/models/<model>/config``), else None."""
        import json

        status, body = wire.http_get(f"{self.http_url}/v2/models/{model}/config", timeout=5)
        if status != 200:
            return None
        param = json.loads(body).get("parameters", {}).get(key) or {}
        return param.get("string_value")


def is_idle(snap: dict[str, dict[str, float]]) -> bool:
    """KV pool all free, nothing active or waiting, and the counters have caught up with the gauges."""
    kv, req = snap["kv"], snap["requests"]
    return (kv.get("max", 0) > 0 and kv.get("free") == kv.get("max") and req.get("active", 1) == 0
            and req.get("waiting", 0) == 0)


class ReadinessMonitor:
    """Polls ``/v2/health/ready`` every ``interval`` s on a thread; records when it was not 200."""

    def __init__(self, http_url: str, interval: float = 0.5, timeout: float = 5.0):
        self.http_url, self.interval, self.timeout = http_url, interval, timeout
        self.t0 = time.monotonic()
        self.samples = 0
        self.gaps: list[dict[str, float]] = []  # {"start", "end"} seconds since t0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-readiness", daemon=True)

    def start(self) -> ReadinessMonitor:
        """Start polling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (a gap still open is closed now)."""
        self._stop.set()
        self._thread.join(timeout=self.timeout + 1)
        if self.gaps and self.gaps[-1]["end"] < 0:
            self.gaps[-1]["end"] = round(time.monotonic() - self.t0, 2)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready = wire.is_ready(self.http_url, timeout=self.timeout)
            self.samples += 1
            now = round(time.monotonic() - self.t0, 2)
            open_gap = bool(self.gaps) and self.gaps[-1]["end"] < 0
            if not ready and not open_gap:
                self.gaps.append({"start": now, "end": -1.0})
            elif ready and open_gap:
                self.gaps[-1]["end"] = now
            self._stop.wait(self.interval)

    def ready_now(self) -> bool:
        """Whether the last poll found the server ready."""
        return not (self.gaps and self.gaps[-1]["end"] < 0)

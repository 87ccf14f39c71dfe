"""The state files of a server started by the CLI: ``<name>.pid`` (the pid alone, for shell scripts) and
``<name>.json`` next to it (pid, ports, model repository, log, python, start time), so that ``stop`` and
``status`` in another process find it."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import TritonServer
    from .supervisor import Supervisor


def state_file(pid_file: Path) -> Path:
    """The JSON state file that goes with a pid file."""
    return Path(pid_file).with_suffix(".json")


def write_state(pid_file: Path, server: TritonServer) -> None:
    """Write the pid file and the state file of a started server."""
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
    """The state of the server a pid file names ({"pid": ...} at least), or None without a readable pid."""
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
    """Delete the pid file and its state file (missing ones are fine)."""
    for p in (Path(pid_file), state_file(pid_file)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def write_supervisor_state(pid_file: Path, supervisor: Supervisor) -> None:
    """The pid and state files of a supervisor (this process): its pid, the public ports, and its
    tritonserver's pid and own (internal) HTTP port."""
    import os

    server = supervisor.server
    pid_file = Path(pid_file)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
    state = {
        "pid": os.getpid(), "supervised": True, "tritonserver_pid": server.pid, "http_port": supervisor.http_port,
        "triton_http_port": server.http_port, "grpc_port": server.grpc_port, "metrics_port": server.metrics_port,
        "model_repository": str(server.model_repository), "log_file": str(server.log_file), "python": server.python,
        "shm_prefix": server.shm_prefix, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if supervisor.config.openai is not None:
        state["openai_port"] = supervisor.config.openai.port
    state_file(pid_file).write_text(json.dumps(state, indent=2) + "\n")

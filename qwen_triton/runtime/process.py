"""Process helpers for a tritonserver running in its own session: free ports, pid checks that survive
zombies and pid reuse, terminating a whole process group (the server and its Python-backend stubs), and
the tail of a log file.  POSIX only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (binding port 0; racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log (from its last 64 KiB), or a note that there is no log."""
    try:
        data = Path(path).read_bytes()[-64 * 1024 :].decode("utf-8", "replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])


def is_tritonserver(pid: int) -> bool:
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


def group_alive(pgid: int) -> bool:
    """True if any process of the process group is left (that we may signal)."""
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
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


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of a process group (e.g. stubs orphaned by a server that died)."""
    if group_alive(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap if it is our child


def terminate(pid: int, timeout: float = 40.0, pgid: int | None = None) -> bool:
    """SIGTERM pid, wait up to timeout, then SIGKILL its process group. True if it had to kill."""
    pgid = pid if pgid is None else pgid
    killed = False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        killed = True
    # Whatever remains of the session (the server after the timeout, stray stubs) gets SIGKILL.
    if group_alive(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        killed = killed or pid_alive(pid)
        for _ in range(50):
            _reap(pid)
            if not group_alive(pgid):
                break
            time.sleep(0.1)
    return killed


STUB = "triton_python_backend_stub"


def processes():
    """(pid, parent pid, command line) of every process /proc shows."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        cmdline = _cmdline(int(entry.name)).replace(b"\0", b" ").decode(errors="replace")
        yield int(entry.name), int(stat.rsplit(")", 1)[-1].split()[1]), cmdline


def remove_leftovers(server_pid: int | None, model_repository: Path, shm_prefix: str) -> list[int]:
    """After tritonserver `server_pid` exited: SIGKILL the Python-backend stubs of `model_repository` that it
    left (still its children, or orphaned) and remove its shared-memory regions (`/dev/shm/<shm_prefix>*`).
    Returns the pids killed."""
    killed = []
    for pid, ppid, cmdline in processes():
        if STUB in cmdline and str(model_repository) in cmdline and \
                (ppid == server_pid or ppid == 1 or not pid_alive(ppid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    for path in Path("/dev/shm").glob(f"{shm_prefix}*"):
        with contextlib.suppress(OSError):
            path.unlink()
    _wait_exited(killed)
    return killed


def _wait_exited(pids: list[int], timeout: float = 5.0) -> None:
    """Wait until SIGKILLed processes are gone (a zombie counts as gone: it has no command line left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_cmdline(pid) for pid in pids):
        time.sleep(0.05)


def _cmdline(pid: int) -> bytes:
    """A process's raw command line (NUL-separated); empty for a zombie or a process that is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""

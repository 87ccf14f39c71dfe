"""Engine processes, watched through pid files: how the entry models learn that the engine died.

Triton 2.51's Python backend does not restart a stub process that dies, and a request that the dead
engine was serving never gets an answer: an entry model waiting on it would wait forever. So each
engine model instance writes its process id to `<run dir>/<model>-<instance>.pid` when it starts (and
removes it when it is unloaded cleanly); the entry models poll those files, and a file whose process is
gone means the engine died: they fail what was waiting on it with UNAVAILABLE and refuse new requests
until a live engine process writes its file again (the supervisor reloads the model). The run directory
is QWEN_TRITON_RUN_DIR, else one per model repository under the system's temp folder.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

RUN_DIR_ENV = "QWEN_TRITON_RUN_DIR"


def run_dir(model_repository: str) -> Path:
    """The run directory of a model repository (`model_repository`: Triton's args["model_repository"],
    the model's own folder, whose parent is the repository)."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    repo = os.path.dirname(os.path.abspath(model_repository))
    return Path(tempfile.gettempdir()) / f"qwen-triton-{hashlib.sha1(repo.encode()).hexdigest()[:12]}"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True  # no /proc: kill(0) said it exists


def write_pid_file(directory: Path, model: str, instance: str) -> Path:
    """Record this process as engine `model` instance `instance` (atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model}-{instance}.pid"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, path)
    return path


class EngineWatch:
    """Polls the engine pid files of one run directory. `down` is the reason the engine is not
    serving (a pid that died), else None."""

    def __init__(self, directory: Path, model: str):
        self.directory, self.model = directory, model
        self.down: str | None = None

    def poll(self) -> str | None:
        """Check the files now; the reason when the engine has just been found dead, else None."""
        dead = []
        for path in sorted(self.directory.glob(f"{self.model}-*.pid")):
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                continue  # being written or removed
            if pid and not pid_alive(pid):
                dead.append(pid)
        if dead:
            reason = f"the engine process (pid {dead[0]}) died"
            newly = self.down is None
            self.down = reason
            return reason if newly else None
        self.down = None
        return None

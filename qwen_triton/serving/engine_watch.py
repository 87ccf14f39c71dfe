"""Model processes, watched through pid files: how the entry models learn that the engine died, and
the supervisor that any model's process did.

Triton 2.51's Python backend does not restart a stub process that dies, and a request that the dead
engine was serving never gets an answer: an entry model waiting on it would wait forever. So each
instance of each of our models writes its process id to `<run dir>/<model>-<instance>.pid` when it
starts (announce_process; removed when it is unloaded cleanly); a file whose process is gone means that
model died. The entry models poll the engine's files: they fail what was waiting on it with UNAVAILABLE
and refuse new requests until a live engine process writes its file again. The supervisor polls every
model's files and reloads a model whose process died. The run directory is QWEN_TRITON_RUN_DIR, else one
per model repository under the system's temp folder.
"""
from __future__ import annotations

import faulthandler
import hashlib
import os
import tempfile
from pathlib import Path

from ..runtime.process import pid_alive

RUN_DIR_ENV = "QWEN_TRITON_RUN_DIR"


def run_dir(model_repository: str) -> Path:
    """The run directory of a model repository (`model_repository`: Triton's args["model_repository"],
    the model's own folder, whose parent is the repository)."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    repo = os.path.dirname(os.path.abspath(model_repository))
    return Path(tempfile.gettempdir()) / f"qwen-triton-{hashlib.sha1(repo.encode()).hexdigest()[:12]}"


def write_pid_file(directory: Path, model: str, instance: str) -> Path:
    """Record this process as instance `instance` of `model` (atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model}-{instance}.pid"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, path)
    return path


def release_pid_file(path: Path) -> None:
    """Remove this process's pid file, unless another process has taken it over: a model reloaded by
    Triton starts its new instance (same name, same file) before it finalizes the old one."""
    try:
        if int(path.read_text().strip() or 0) == os.getpid():
            path.unlink(missing_ok=True)
    except (OSError, ValueError):
        pass


def announce_process(args: dict) -> Path:
    """Record this process as an instance of a model, from the `args` of Triton's initialize (the model's
    finalize removes the returned file), and have a fatal signal print every thread's Python stack to
    stderr, which is tritonserver's log (the stub's embedded interpreter ignores PYTHONFAULTHANDLER)."""
    faulthandler.enable(all_threads=True)
    return write_pid_file(run_dir(args["model_repository"]), args["model_name"], args["model_instance_name"])


class EngineWatch:
    """Polls the pid files of one model (`what` names it in the reason) in one run directory. `down` is
    the reason the model is not serving (a pid that died), else None."""

    def __init__(self, directory: Path, model: str, what: str = "the engine process"):
        self.directory, self.model, self.what = directory, model, what
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
            reason = f"{self.what} (pid {dead[0]}) died"
            newly = self.down is None
            self.down = reason
            return reason if newly else None
        self.down = None
        return None

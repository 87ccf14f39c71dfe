"""Ranks 1 .. N-1 of a tensor-parallel engine as rank 0 sees them: their processes, started, fed
commands and watched.

Each worker is `python -m qwen_triton.distributed.worker` with its stdin a pipe from rank 0 (pipe.py).
One watcher thread per worker waits for its exit; a worker that dies while the engine runs is logged at
once, NCCL's collectives are aborted (gloo's fail by themselves on the closed connection), and the next
step (or the one under way) raises TensorParallelError naming the rank and how it ended. The engine
cannot go on without a rank: the error ends it (the engine model's process then exits and is restarted).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from ..config import EngineConfig
from ..errors import EngineDeadError
from .group import GPU_ENV, master_store
from .pipe import WorkerSpec, joined_key, write_message

log = logging.getLogger(__name__)
START_TIMEOUT_S = 300.0  # a worker's Python, torch and the store connection; loading weights comes later
STOP_TIMEOUT_S = 10.0
DEATH_GRACE_S = 2.0  # after a failed collective, how long to wait for the dead rank's exit to be seen
POLL_S = 0.05


class TensorParallelError(EngineDeadError):
    """A tensor-parallel rank died, or the ranks fell out of step: the engine cannot go on."""


def worker_python() -> str:
    """The interpreter for the workers: this one, or the environment's python3 when this process is
    an embedded interpreter (Triton's Python backend stub, whose sys.executable is not a Python)."""
    exe = sys.executable
    if exe and os.path.basename(exe).startswith("python"):
        return exe
    return os.path.join(sys.prefix, "bin", "python3")


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GPU_ENV)
    root = str(Path(__file__).resolve().parents[2])  # the checkout holding qwen_triton, installed or not
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _kill_all(procs: list[subprocess.Popen]) -> None:
    """The finalizer's last resort (a runner dropped without close(), or the interpreter exiting)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()


class Workers:
    """The worker processes of one engine. `store` is rank 0's rendezvous store; `on_death` (set once
    the group exists) runs on a watcher thread when a worker dies unasked."""

    def __init__(self, model_path: str, config: EngineConfig, max_model_len: int,
                 start_timeout_s: float = START_TIMEOUT_S):
        self.size = config.tensor_parallel_size
        self.start_timeout_s = start_timeout_s
        self.on_death: Callable[[], None] | None = None
        self.broken: str | None = None  # why the engine cannot go on, once it cannot
        self._lock = threading.Lock()
        self._exits: dict[int, int] = {}  # rank -> exit code (watcher threads)
        self._stopping = False
        self.store = master_store(self.size, timedelta(seconds=start_timeout_s))
        self._procs: dict[int, subprocess.Popen] = {}
        self._watchers: dict[int, threading.Thread] = {}
        self._started: list[subprocess.Popen] = []  # the finalizer's (it must not hold self)
        weakref.finalize(self, _kill_all, self._started)
        try:
            for rank in range(1, self.size):
                self._spawn(rank, WorkerSpec(model_path, config, max_model_len, rank, self.size, self.store.port,
                                             start_timeout_s))
        except BaseException:
            self.stop()
            raise

    def _spawn(self, rank: int, spec: WorkerSpec) -> None:
        proc = subprocess.Popen([worker_python(), "-m", "qwen_triton.distributed.worker"],
                                stdin=subprocess.PIPE, env=_worker_env())
        self._procs[rank] = proc
        self._started.append(proc)
        watcher = threading.Thread(target=self._watch, args=(rank, proc), name=f"qwen-triton-tp-watch-{rank}",
                                   daemon=True)
        self._watchers[rank] = watcher
        watcher.start()
        write_message(proc.stdin, spec)

    def _watch(self, rank: int, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self._lock:
            self._exits[rank] = code
            stopping = self._stopping
        if not stopping:
            log.error("tensor-parallel worker rank %d (pid %d) %s", rank, proc.pid, describe_exit(code))
            if self.on_death is not None:
                self.on_death()

    # -- start-up ------------------------------------------------------------------------------------------

    def wait_joined(self) -> None:
        """Until every worker reached the store; TensorParallelError if one dies or is not up in time."""
        deadline = time.monotonic() + self.start_timeout_s
        waiting = set(self._procs)
        while waiting:
            self._raise_if_dead()
            waiting = {rank for rank in waiting if not self.store.check([joined_key(rank)])}
            if waiting and time.monotonic() > deadline:
                self.stop()
                raise TensorParallelError(f"tensor-parallel workers {sorted(waiting)} did not start within "
                                          f"{self.start_timeout_s:.0f} s")
            time.sleep(POLL_S if waiting else 0)

    # -- steps ---------------------------------------------------------------------------------------------

    def send(self, command: tuple) -> None:
        """A command to every worker, in rank order (each reads it before it can join the collective)."""
        self._raise_if_dead()
        for proc in self._procs.values():
            write_message(proc.stdin, command)

    def _raise_if_dead(self) -> None:
        if self.broken is None:
            death = self.death()
            if death is None:
                return
            self.broken = death
            self.stop()
        raise TensorParallelError(self.broken)

    def death(self, grace_s: float = 0.0) -> str | None:
        """Which worker died and how (waiting up to grace_s for one to), or None."""
        deadline = time.monotonic() + grace_s
        while True:
            with self._lock:
                exits = dict(self._exits)
            if exits:
                rank, code = min(exits.items())
                return (f"tensor-parallel worker rank {rank} (pid {self._procs[rank].pid}) {describe_exit(code)}; "
                        "the engine cannot go on without it and must be restarted")
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_S)

    def fail(self, exc: BaseException) -> TensorParallelError:
        """The error that ends the engine after a collective-running call raised `exc` on rank 0: a
        worker's death if one died, else the failure itself (the ranks are then out of step). Stops the
        workers."""
        if self.broken is None:
            self.broken = self.death(DEATH_GRACE_S) or (
                f"tensor-parallel step failed on rank 0 ({type(exc).__name__}: {exc}); the ranks are out of step "
                "and the engine must be restarted")
            self.stop()
        return TensorParallelError(self.broken)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Tell every worker to stop and wait for it; kill the ones that do not. Idempotent."""
        with self._lock:
            self._stopping = True
        for proc in self._procs.values():
            try:
                write_message(proc.stdin, ("stop",))
                proc.stdin.close()
            except (OSError, ValueError):  # already gone, or closed by an earlier stop
                pass
        deadline = time.monotonic() + timeout_s
        for rank, watcher in self._watchers.items():
            watcher.join(max(deadline - time.monotonic(), 0))
            if watcher.is_alive():
                log.warning("tensor-parallel worker rank %d did not stop; killing it", rank)
                self._procs[rank].kill()
                watcher.join()

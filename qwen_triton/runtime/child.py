"""A process the supervisor runs beside tritonserver (the OpenAI-compatible API): started once Triton is
ready, started again when it exits, stopped with the supervisor.

It runs in the supervisor's own process group (not a session of its own, unlike tritonserver), so that
`python -m qwen_triton.runtime stop`, which ends the supervisor's group, ends it too even when the
supervisor was killed before it could stop it.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenAIService:
    """Where the OpenAI-compatible API listens; it reaches Triton's gRPC port on 127.0.0.1."""

    port: int
    host: str = "127.0.0.1"

    def argv(self, grpc_port: int, model_repository: Path) -> list[str]:
        """The command line of `python -m qwen_triton.openai_api` for this Triton (the API key, if any,
        comes from the environment: QWEN_TRITON_API_KEY, never the process list)."""
        return [sys.executable, "-m", "qwen_triton.openai_api", "--triton-grpc", f"127.0.0.1:{grpc_port}",
                "--host", self.host, "--port", str(self.port), "--model-repository", str(model_repository),
                "--log-level", "warning"]


class SupervisedProcess:
    """One child process: `start`, `poll` (starts it again if it exited; True then), `stop`."""

    def __init__(self, name: str, argv: list[str], log_file: Path):
        self.name, self.argv, self.log_file = name, argv, Path(log_file)
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        log.info("started %s (pid %d; log %s)", self.name, self.proc.pid, self.log_file)

    def poll(self) -> bool:
        """Start it again if it exited; True when it did."""
        if self.proc is None or self.proc.poll() is None:
            return False
        self.restarts += 1
        log.error("%s exited with code %s; starting it again", self.name, self.proc.returncode)
        self.start()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds (its own pid only: its group is the supervisor's)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

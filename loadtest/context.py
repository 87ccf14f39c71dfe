"""The state one level of a load test shares between its Locust users: where the server is, what to send,
how many requests may still start, and the records of those that ran.  Plain Python (no gevent)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from qwen_triton.serving import contract as c
from qwen_triton.wire import env_port

from .metrics import RequestRecord
from .workloads import Workload, user_rng

PROTOCOLS = ("http_stream", "grpc_stream", "http")


@dataclass
class Target:
    """The server under test (ports from TRITON_*_PORT by default; host 127.0.0.1)."""

    host: str = "127.0.0.1"
    http_port: int = field(default_factory=lambda: env_port("http"))
    grpc_port: int = field(default_factory=lambda: env_port("grpc"))
    metrics_port: int = field(default_factory=lambda: env_port("metrics"))
    model: str = c.ENSEMBLE

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


@dataclass
class LoadTestContext:
    """Shared by the users of one level (``environment.loadtest``).

    ``max_requests`` bounds how many requests start in this level (None: no bound); ``draining`` stops
    new ones (the runner sets it when the level's time or count is up, then waits for in-flight ones).
    ``extra_inputs`` are sent with every request (sampling settings, ``return_log_probs``...)."""

    target: Target
    workload: Workload
    level: int = 1
    seed: int = 0
    timeout_s: float = 600.0
    extra_inputs: dict[str, Any] = field(default_factory=dict)
    max_requests: int | None = None
    think_time_s: float = 0.0
    record: bool = True
    t0: float = field(default_factory=time.perf_counter)  # the run's start (perf_counter)

    started: int = 0
    in_flight: int = 0
    draining: bool = False
    records: list[RequestRecord] = field(default_factory=list)
    _users: int = 0
    _sessions: int = 0

    def next_user(self) -> tuple[int, Any]:
        """A new user's index and its random source."""
        index = self._users
        self._users += 1
        return index, user_rng(self.seed, self.level, index)

    def next_session(self) -> int:
        self._sessions += 1
        return self._sessions - 1

    def may_start(self) -> bool:
        """Claim the right to start one request (greenlets do not switch inside this)."""
        if self.draining or (self.max_requests is not None and self.started >= self.max_requests):
            return False
        self.started += 1
        return True

    @property
    def exhausted(self) -> bool:
        return self.max_requests is not None and self.started >= self.max_requests

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def begin(self) -> None:
        self.in_flight += 1

    def done(self, record: RequestRecord) -> None:
        self.in_flight -= 1
        if self.record:
            self.records.append(record)

    def inputs(self, base: dict[str, Any], stream: bool) -> dict[str, Any]:
        """A request's ensemble inputs: the turn's, the extra ones, the stream flag, and the prompt left
        out of the output (so output_log_probs counts generated tokens only)."""
        out = dict(base)
        out.update(self.extra_inputs)
        out[c.STREAM] = stream
        out.setdefault(c.EXCLUDE_INPUT_IN_OUTPUT, True)
        return out

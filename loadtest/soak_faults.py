"""The soak test's injected faults (``python -m loadtest.soak --fault kill-engine|sigterm``).

* ``kill-engine``: SIGKILL to the engine model's ``triton_python_backend_stub`` mid-run.  Requests in flight
  must fail within ``--fault-error-timeout`` (an error, not a hang); within ``--recovery-timeout`` a new
  engine process must be serving (ready, and a greedy request answered), else the run stops and fails with
  "engine not restarted" (Triton 2.51 alone never restarts a dead stub: a supervisor has to).
* ``sigterm``: SIGTERM under load to the top of the serving stack (the supervisor that owns the HTTP front
  when there is one, else tritonserver); no new request starts.  Requests in flight must finish or get an
  error, the process must exit within tritonserver's ``--exit-timeout-secs`` (plus 10 s) and no process of
  the stack (tritonserver, a stub) may outlive it.

Errors are expected between the fault and the recovery (the fault window); hangs never are.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from qwen_triton import wire
from qwen_triton.serving import contract as c

from .soak_client import SoakClient
from .soak_report import Record, check
from .soak_server import ServerProbe, alive, engine_stub, exit_timeout, wait_exit

EXIT_GRACE_S = 10.0  # the stack may take this much longer than tritonserver's exit timeout
RECOVERY_GRACE_S = 2.0  # errors still expected this long after the recovery


class FaultInjector:
    """Injects ``args.fault`` on a thread (:meth:`start`) and records what happened in ``info``."""

    def __init__(self, probe: ServerProbe, client: SoakClient, args: argparse.Namespace,
                 now: Callable[[], float], stop: threading.Event):
        self.probe, self.client, self.args, self.now, self.stop = probe, client, args, now, stop
        self.info: dict[str, Any] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Inject the fault ``--fault-delay`` seconds from now, on a thread."""
        self._thread = threading.Thread(target=self._run, name="soak-fault", daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for the fault and its recovery (or exit) to play out."""
        if self._thread is not None:
            self._thread.join(self.args.recovery_timeout + self.args.fault_delay + 120)

    def _run(self) -> None:
        if self.stop.wait(self.args.fault_delay):
            return
        self.info["kind"] = self.args.fault
        try:
            if self.args.fault == "kill-engine":
                self._kill_engine()
            elif self.args.fault == "sigterm":
                self._sigterm()
        except Exception as exc:  # noqa: BLE001 - reported as the fault's error
            self.info["error"] = f"{type(exc).__name__}: {exc}"
            self.stop.set()

    def _kill_engine(self) -> None:
        server = self.probe.server_pid()
        old = engine_stub(server) if server else None
        if old is None:
            self.info["error"] = "no engine stub process found"
            return
        self.info.update(at=self.now(), engine_pid=old)
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + self.args.recovery_timeout
        body = {c.TEXT_INPUT: "are you back?", c.MAX_TOKENS: 2, c.TEMPERATURE: 0.0, c.EXCLUDE_INPUT_IN_OUTPUT: True}
        while time.monotonic() < deadline:
            server = self.probe.server_pid()
            new = engine_stub(server) if server else None
            if new and new != old and wire.is_ready(self.client.http_url):
                if self.client.send("http", c.ENSEMBLE, body).result == "ok":
                    self.info.update(recovered_at=self.now(), new_engine_pid=new,
                                     recovery_s=round(self.now() - self.info["at"], 1))
                    return
            time.sleep(1.0)
        self.info["error"] = f"engine not restarted within {self.args.recovery_timeout:.0f} s"
        self.stop.set()

    def _sigterm(self) -> None:
        server, top = self.probe.server_pid(), self.probe.top_pid()
        if server is None or top is None:
            self.info["error"] = "no tritonserver process found"
            return
        procs = self.probe.processes()
        timeout = exit_timeout(server)
        target = "front (supervisor)" if top != server else "tritonserver"
        self.info.update(at=self.now(), target=target, pid=top, exit_timeout_s=timeout)
        self.stop.set()  # no new job starts; those in flight go on
        os.kill(top, signal.SIGTERM)
        self.info["exit_s"] = wait_exit(top, timeout + EXIT_GRACE_S + 30)
        stubs = {name: pid for name, pid in procs.items() if pid != top}
        deadline = time.monotonic() + 5
        while any(alive(p) for p in stubs.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.info["left_running"] = sorted(name for name, pid in stubs.items() if alive(pid))

    def window(self) -> tuple[float, float] | None:
        """(start, end) in run seconds of the time errors are expected; None without a fault."""
        if "at" not in self.info:
            return None
        end = self.info.get("recovered_at")
        return self.info["at"], (end + RECOVERY_GRACE_S if end is not None else math.inf)

    def checks(self, records: list[Record]) -> list[dict[str, Any]]:
        """The fault's own checks (none without one)."""
        if self.args.fault == "none":
            return []
        info = self.info
        out = [check("fault injected", "at" in info, f"at {info['at']} s" if "at" in info else info.get("error"))]
        if "at" not in info:
            return out
        at = info["at"]
        inflight = [r for r in records if r.start < at < r.end]
        ended = dict(Counter(r.outcome.result for r in inflight))
        if self.args.fault == "kill-engine":
            out.append(check("engine restarted after SIGKILL", info.get("new_engine_pid") is not None,
                             info.get("error") or f"serving again after {info.get('recovery_s')} s"))
            slow = [r.index for r in inflight if r.outcome.result != "ok"
                    and r.end - at > self.args.fault_error_timeout]
            out.append(check(f"requests in flight at the kill fail within {self.args.fault_error_timeout:.0f} s",
                             not slow, {"in_flight": ended, "slow": slow[:10]}))
        else:
            exit_s, limit = info.get("exit_s"), info.get("exit_timeout_s", 30) + EXIT_GRACE_S
            out.append(check(f"{info.get('target')} exits within the exit timeout",
                             exit_s is not None and exit_s <= limit,
                             "still running" if exit_s is None else f"exited after {exit_s:.1f} s (limit {limit} s)"))
            out.append(check("no process of the stack outlives it", not info.get("left_running"),
                             info.get("left_running") or "none left"))
            out.append(check("requests in flight at SIGTERM end (ok or error)", "hang" not in ended,
                             {"in_flight": ended}))
        return out

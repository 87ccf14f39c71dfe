"""Soak test of a running qwen-triton server: bounded rounds of mixed traffic, then a verdict.

    python -m loadtest.soak --rounds 4 --requests-per-round 60 --concurrency 8 --duration 120 --seed 1
    python -m loadtest.soak --fault kill-engine     # SIGKILL the engine's stub mid-run; expect a restart
    python -m loadtest.soak --fault sigterm         # SIGTERM tritonserver under load; expect a clean exit

Each round sends ``--requests-per-round`` jobs at ``--concurrency`` over HTTP ``/generate``, HTTP
``/generate_stream`` (SSE), a gRPC stream and gRPC with ``stream=false``, to the ``ensemble`` and (a share
``--bls-share``) ``tensorrt_llm_bls``.  The seeded mix (``--mix``) holds greedy requests (whose text must
equal the reply each prompt got when sent alone before the run), sampled ones, multi-turn chats (each turn
sends the conversation so far as ``messages``), cancellations (SSE close or gRPC cancel, after k chunks
or t ms) and malformed requests from :mod:`loadtest.soak_catalogue` (each must get a 4xx naming the
problem).  Every ``--burst-every`` jobs a burst of long forced greedy replies, sized from the KV pool's
gauges to overflow it, makes the engine preempt (and its texts must still equal the alone reply).  The
catalogue is also swept once, alone, before the load.  The run ends after ``--rounds`` or ``--duration``
seconds, whichever comes first (requests in flight then finish).

Checked: readiness polled every 0.5 s; no request lost, hung (``--timeout``) or failed; malformed ones
answered as the catalogue says; afterwards the KV pool all free, nothing active, the engine's counters
balanced (admitted = finished + aborted + failed), no failed request in the engine, cancellations seen
as aborts, preemptions during bursts; every process's RSS flat across rounds (last <= first +
max(``--rss-slack-mb``, ``--rss-slack-frac``)); no process died.  Writes a JSON report (``--out``) and
prints a summary; exit status 0 on PASS, 1 on FAIL.  docs/soak.md has the details.

The parts: :mod:`.soak_plan` (the jobs and bursts), :mod:`.soak_catalogue` (the malformed requests),
:mod:`.soak_client` (one request over one protocol), :mod:`.soak_server` (processes, RSS, metrics,
readiness), :mod:`.soak_faults` (kill-engine, sigterm), :mod:`.soak_report` (judging, checks, report,
summary).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qwen_triton import wire
from qwen_triton.serving import contract as c

from . import soak_report as rep
from .soak_catalogue import Malformed, body_bytes, entries
from .soak_client import Outcome, SoakClient, raw_inputs
from .soak_faults import FaultInjector
from .soak_plan import BURST_PROMPT, DEFAULT_MIX, GREEDY_PROMPTS, Job, Planner, parse_mix
from .soak_server import ReadinessMonitor, ServerProbe

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ("none", "kill-engine", "sigterm")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--rounds", type=int, default=4, help="rounds of traffic (default 4)")
    a("--requests-per-round", type=int, default=60, help="jobs per round (default 60)")
    a("--concurrency", type=int, default=8, help="jobs in flight at once, bursts aside (default 8)")
    a("--duration", type=float, default=300.0, help="no job starts after this many seconds (default 300)")
    a("--seed", type=int, default=0)
    a("--mix", type=parse_mix, default=parse_mix(DEFAULT_MIX), help=f"kind shares (default {DEFAULT_MIX})")
    a("--bls-share", type=float, default=0.2, help="share of jobs sent to tensorrt_llm_bls (default 0.2)")
    a("--timeout", type=float, default=60.0, help="a request not ended after this many seconds hangs (default 60)")
    a("--greedy-tokens", type=int, default=16, help="max_tokens of greedy requests (default 16)")
    a("--greedy-drift", action="store_true",
      help="report greedy replies that differ from the alone ones without failing (GPU: bf16 kernels "
           "differ with the batch size, so a reply under load may drift after a near-tie)")
    a("--burst-every", type=int, default=40, help="a KV-exhausting burst every N jobs; 0: none (default 40)")
    a("--burst-size", type=int, default=0, help="requests per burst (default 0: from the KV gauges)")
    a("--burst-tokens", type=int, default=0, help="forced reply length in bursts (default 0: min(max_output_len, 256))")
    a("--dangerous", action="store_true", help="also send catalogue entries known to crash tritonserver 2.51")
    a("--entry", action="append", default=[], metavar="NAME", help="send only these catalogue entries")
    a("--no-sweep", dest="sweep", action="store_false", help="skip the alone pass over the catalogue")
    a("--fault", choices=FAULTS, default="none", help="inject a fault mid-run (default none)")
    a("--fault-round", type=int, default=0, help="the round the fault hits (default: the middle one)")
    a("--fault-delay", type=float, default=2.0, help="seconds into that round (default 2)")
    a("--fault-error-timeout", type=float, default=10.0,
      help="kill-engine: in-flight requests must fail within this many seconds (default 10)")
    a("--recovery-timeout", type=float, default=120.0, help="kill-engine: seconds to be serving again (default 120)")
    a("--idle-timeout", type=float, default=30.0, help="seconds to wait for the engine to idle afterwards")
    a("--ready-timeout", type=float, default=60.0, help="seconds to wait for the server at the start")
    a("--rss-slack-mb", type=float, default=64.0)
    a("--rss-slack-frac", type=float, default=0.10)
    a("--host", default="127.0.0.1")
    a("--http-port", type=int, default=wire.env_port("http"))
    a("--grpc-port", type=int, default=wire.env_port("grpc"))
    a("--metrics-port", type=int, default=wire.env_port("metrics"))
    a("--server-pid", type=int, default=None, help="tritonserver's pid (default: the one on --http-port)")
    a("--out", type=Path, default=None, help="report file (default logs/soak/<time>/report.json)")
    a("-q", "--quiet", action="store_true", help="no summary on stdout")
    args = p.parse_args(argv)
    try:
        entries(args.dangerous, tuple(args.entry))
    except KeyError as exc:
        p.error(str(exc.args[0]))
    return args



class Soak:
    """One soak run against the server the arguments name; :meth:`run` returns the report."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        host = args.host
        self.client = SoakClient(f"http://{host}:{args.http_port}", f"{host}:{args.grpc_port}", args.timeout)
        self.probe = ServerProbe(self.client.http_url, self.client.grpc_url, f"http://{host}:{args.metrics_port}/metrics",
                                 args.server_pid)
        self.catalogue = entries(args.dangerous, tuple(args.entry))
        self.t0 = time.monotonic()
        self.monitor = ReadinessMonitor(self.client.http_url)
        self.records: list[rep.Record] = []
        self.rounds: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.dispatched = 0
        self.bursts = 0
        self.limits_burst = 0  # requests per burst, once known
        self.faults = FaultInjector(self.probe, self.client, args, self.now, self.stop)

    def now(self) -> float:
        """Seconds since the run started."""
        return round(time.monotonic() - self.t0, 3)

    def run(self) -> dict[str, Any]:
        """Prepare, send the rounds (with the fault, if any), check; the report."""
        report: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                               for k, v in vars(self.args).items()}, "checks": []}
        if not wire.wait_ready(self.client.http_url, self.args.ready_timeout):
            report["checks"].append(rep.check("server ready at the start", False, self.client.http_url))
            return report
        start = {"processes": self.probe.processes(), "metrics": self.probe.metrics()}
        limits = self._limits(start["metrics"])
        self.monitor.t0 = self.t0
        self.monitor.start()
        try:
            planner = Planner(self.args, self._references(limits), self.catalogue, limits)
        except RuntimeError as exc:
            self.monitor.stop()
            report["checks"].append(rep.check("alone requests answered", False, str(exc)))
            return report
        if self.args.sweep:
            self._run_jobs([Job(-1 - i, 0, "malformed", e.protocol, e.model, {}, entry=e)
                            for i, e in enumerate(self.catalogue)], None, 1)
        self._run_rounds(planner)
        self.faults.join()
        self.monitor.stop()
        report.update(start=start, limits=limits, elapsed_s=self.now(), rounds=self.rounds)
        return self._verdict(report, start)

    def _limits(self, metrics: dict[str, Any] | None) -> dict[str, Any]:
        """The pool and lengths the bursts are sized from (KV gauges, preprocessing's max_output_len)."""
        kv, req = (metrics or {}).get("kv", {}), (metrics or {}).get("requests", {})
        max_out = self.probe.model_parameter(c.PREPROCESSING, c.PARAM_MAX_OUTPUT_LEN)
        limits = {"kv_max": int(kv.get("max", 0)), "tokens_per": int(kv.get("tokens_per", 16)),
                  "max_seqs": int(req.get("max", 8)), "max_output_len": int(max_out or 256)}
        tokens = self.args.burst_tokens or min(limits["max_output_len"], 256)
        each = math.ceil((16 + tokens) / limits["tokens_per"])  # a burst prompt is < 16 tokens
        size = self.args.burst_size or max(2, min(limits["max_seqs"], limits["kv_max"] // each + 2))
        limits.update(burst_tokens=tokens, burst_blocks_each=each, burst_size=size,
                      exhausts_pool=size * each > limits["kv_max"] and size <= limits["max_seqs"])
        self.limits_burst = size
        return limits

    def _references(self, limits: dict[str, Any]) -> dict[str, str]:
        """The reply each greedy prompt gets sent alone (HTTP /generate, ensemble, one at a time)."""
        refs = {}
        for prompt, tokens, forced in [(p, self.args.greedy_tokens, False) for p in GREEDY_PROMPTS] + [
                (BURST_PROMPT, limits["burst_tokens"], True)]:
            out = self.client.send("http", c.ENSEMBLE, Planner.greedy_body(prompt, tokens, forced))
            if out.result != "ok":
                raise RuntimeError(f"the alone request for {prompt!r} failed: {out.result} {out.status} {out.error}")
            refs[prompt] = out.text
        return refs

    def _run_rounds(self, planner: Planner) -> None:
        fault_round = self.args.fault_round or (self.args.rounds + 1) // 2
        index = 0
        for rnd in range(1, self.args.rounds + 1):
            if self.stop.is_set() or self.now() >= self.args.duration:
                break
            if self.args.fault != "none" and rnd == fault_round:
                self.faults.start()
            jobs = planner.round_jobs(rnd, index)
            index += len(jobs)
            started = self.now()
            sent = self._run_jobs(jobs, planner, self.args.concurrency)
            time.sleep(0.5)
            self.rounds.append({"round": rnd, "jobs": sent, "seconds": round(self.now() - started, 1),
                                "rss_mb": self.probe.rss(), "engine": (self.probe.metrics() or {}).get("engine")})

    def _run_jobs(self, jobs: list[Job], planner: Planner | None, concurrency: int) -> int:
        """Send ``jobs`` with ``concurrency`` in flight, a burst every --burst-every; wait for all of them."""
        slots = threading.Semaphore(concurrency)
        sent = 0
        with ThreadPoolExecutor(concurrency, thread_name_prefix="soak") as pool, \
                ThreadPoolExecutor(max(16, 2 * self.limits_burst), thread_name_prefix="soak-burst") as burst_pool:
            for job in jobs:
                if planner is not None and self.args.burst_every and job.index and \
                        job.index % self.args.burst_every == 0:
                    for b in planner.burst(job.round, 1_000_000 + self.bursts * 1000):
                        self._submit(burst_pool, b)
                    self.bursts += 1
                slots.acquire()
                if self.stop.is_set() or (job.round and self.now() >= self.args.duration):
                    slots.release()
                    break
                self._submit(pool, job).add_done_callback(lambda _: slots.release())
                sent += 1
        return sent

    def _submit(self, pool: ThreadPoolExecutor, job: Job):
        with self.lock:
            self.dispatched += 1
        return pool.submit(self._execute, job)

    def _execute(self, job: Job) -> None:
        """Run one job and keep its record (a client-side exception is recorded too, as such)."""
        start = self.now()
        try:
            if job.entry is not None:
                out = self._malformed(job.entry)
            elif job.turns:
                out = self._chat(job)
            else:
                out = self.client.send(job.protocol, job.model, job.body, job.cancel)
        except Exception as exc:  # noqa: BLE001 - a soak must record whatever breaks
            out = Outcome("exception", error=f"{type(exc).__name__}: {exc}")
        record = rep.Record(job.index, job.round, job.kind, job.protocol, job.model, out, start, self.now(),
                            entry=job.entry, expect_text=job.expect_text, requests=max(1, len(job.turns)))
        with self.lock:
            self.records.append(record)

    def _malformed(self, entry: Malformed) -> Outcome:
        start = time.monotonic()
        if entry.protocol == "grpc":
            out = self.client.grpc(entry.model, raw_inputs(entry.inputs))
        else:
            out = self.client.http(entry.model, body_bytes(entry), stream=entry.protocol == "sse")
        out.seconds = time.monotonic() - start
        return out

    def _chat(self, job: Job) -> Outcome:
        """A multi-turn chat: each turn sends every message so far (the real replies included)."""
        messages: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
        out = Outcome("ok")
        for turn in job.turns:
            messages.append({"role": "user", "content": turn})
            out = self.client.send(job.protocol, job.model, {**job.body, c.MESSAGES: json.dumps(messages)})
            if out.result != "ok":
                return out
            messages.append({"role": "assistant", "content": out.text})
        return out

    def _verdict(self, report: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
        """Everything checked after the run, into the report."""
        window = self.faults.window()
        gone = self.args.fault == "sigterm" or (self.faults.info.get("error") is not None)
        idle = None if gone else self.probe.wait_idle(self.args.idle_timeout)
        restarted = self.faults.info.get("new_engine_pid") is not None
        report.update(counts=rep.counts(self.records), failures=rep.failures(self.records, window),
                      malformed=rep.malformed_table(self.catalogue, self.records, window),
                      readiness={"samples": self.monitor.samples, "gaps": self.monitor.gaps},
                      rss_flat=rep.rss_flat(self.rounds, self.args.rss_slack_mb, self.args.rss_slack_frac),
                      idle=idle, fault=self.faults.info or None)
        report["engine"] = rep.engine_summary(start["metrics"], idle, restarted)
        report["bursts"] = {**{k: report["limits"][k] for k in ("kv_max", "tokens_per", "exhausts_pool")},
                            "size": report["limits"]["burst_size"], "tokens": report["limits"]["burst_tokens"],
                            "bursts": self.bursts, "sent": sum(r.kind == "burst" for r in self.records)}
        report["checks"] = rep.run_checks(report, self.records, self.dispatched, window, self.args.fault,
                                           greedy_exact=not self.args.greedy_drift) \
            + self.faults.checks(self.records) \
            + rep.process_checks(start["processes"], self.probe.processes(), self.args.fault)
        return report


def default_out() -> Path:
    """logs/soak/<time>/report.json under the checkout."""
    return ROOT / "logs" / "soak" / time.strftime("%Y%m%d-%H%M%S") / "report.json"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a soak; write the report; 0 on PASS, 1 on FAIL."""
    args = parse_args(argv)
    out = args.out or default_out()
    report = Soak(args).run()
    report.setdefault("elapsed_s", 0.0)
    report["out"] = str(out)
    rep.verdict(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str))
    if not args.quiet:
        print(rep.summary(report) if "counts" in report else f"soak FAIL: {report['reasons']}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())

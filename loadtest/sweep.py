"""The concurrency sweep: a warm-up, then one level per concurrency, each run with Locust's Python API
until its time or request budget is used up and then drained; a summary of each level from the client's
records and the server's metrics.  Runs on gevent (the caller patches the standard library first)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment

from qwen_triton.serving import contract as c

from .context import PROTOCOLS, LoadTestContext, Target
from .metrics import LevelWindow, RequestRecord, summarize
from .prometheus import level_server_summary
from .run_files import write_outputs
from .scrape import Scraper
from .users import USER_CLASSES, init_grpc_gevent
from .workloads import Workload

Say = Callable[[str], None]


class _QuietSpawnWarning(logging.Filter):
    """Locust warns about spawn rates above 100/s; here every user of a level starts at once on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "spawn rate is very high" not in record.getMessage()


def quiet_spawn_warning() -> None:
    """Silence Locust's spawn-rate warning (once per process)."""
    runners = logging.getLogger("locust.runners")
    if not any(isinstance(f, _QuietSpawnWarning) for f in runners.filters):
        runners.addFilter(_QuietSpawnWarning())


def user_classes(protocols: Sequence[str]) -> tuple[type, ...]:
    """The Locust user class of each protocol name (SystemExit naming the choices for an unknown one)."""
    unknown = [p for p in protocols if p not in USER_CLASSES]
    if unknown:
        raise SystemExit(f"unknown protocol {', '.join(unknown)}; choose from {', '.join(PROTOCOLS)}")
    return tuple(USER_CLASSES[p] for p in protocols)


@dataclass(frozen=True)
class SweepPlan:
    """What one sweep runs: the server, the workload and the inputs sent with every request, the users
    (mixed evenly), the levels and each level's bound (``duration_s`` and/or a request count)."""

    target: Target
    workload: Workload
    protocols: tuple[str, ...]
    levels: tuple[int, ...]
    duration_s: float | None
    requests: int | None
    requests_per_user: int | None
    extra_inputs: Mapping[str, Any]
    warmup: int = 2
    drain_timeout_s: float = 120.0
    seed: int = 0
    timeout_s: float = 600.0
    think_time_s: float = 0.0

    def level_requests(self, level: int) -> int | None:
        """The request budget of a level (None: only its time bounds it)."""
        if self.requests is not None:
            return self.requests
        return None if self.requests_per_user is None else self.requests_per_user * level

    def context(self, level: int, t0: float, max_requests: int | None) -> LoadTestContext:
        """A fresh context for one level (level 0: the warm-up)."""
        return LoadTestContext(target=self.target, workload=self.workload, level=level, seed=self.seed,
                               timeout_s=self.timeout_s, extra_inputs=dict(self.extra_inputs),
                               think_time_s=self.think_time_s, t0=t0, max_requests=max_requests)


def run_level(ctx: LoadTestContext, classes: Sequence[type], concurrency: int, duration_s: float | None,
              drain_timeout_s: float) -> tuple[LevelWindow, Environment]:
    """Run one level until its time or request budget is used up, then drain; the level's window."""
    init_grpc_gevent()  # before the users' first channel
    env = Environment(user_classes=list(classes), catch_exceptions=True)
    env.loadtest = ctx  # type: ignore[attr-defined]
    runner = env.create_local_runner()
    start = drain_start = ctx.now()
    runner.start(concurrency, spawn_rate=float(concurrency))  # one batch: every user at once
    try:
        while True:
            gevent.sleep(0.05)
            elapsed = ctx.now() - start
            if duration_s is not None and elapsed >= duration_s:
                break
            if ctx.exhausted and ctx.in_flight == 0:
                break
        ctx.draining = True
        drain_start = ctx.now()
        deadline = time.monotonic() + drain_timeout_s
        while ctx.in_flight > 0 and time.monotonic() < deadline:
            gevent.sleep(0.02)
    finally:
        runner.quit()  # users still in a request are killed; their records say "cancelled"
    ends = [r.start_s + (r.latency_s or 0.0) for r in ctx.records]
    end = max(ends) if ends else ctx.now()
    return LevelWindow(start, end, drain_start), env


def locust_counts(env: Environment) -> dict[str, Any]:
    """Locust's own totals of a level, beside ours."""
    total = env.stats.total
    return {"requests": total.num_requests, "failures": total.num_failures,
            "avg_response_ms": total.avg_response_time, "median_response_ms": total.median_response_time}


def run_sweep(plan: SweepPlan, scraper: Scraper, run: dict[str, Any], out: Path, say: Say) -> list[RequestRecord]:
    """The warm-up, then every level: each level's entry goes into ``run["levels"]`` and the files are
    written after every level (a partial run is readable); every level's records."""
    quiet_spawn_warning()
    classes = user_classes(plan.protocols)
    if plan.warmup > 0:
        ctx = plan.context(0, scraper.t0, plan.warmup)
        run_level(ctx, classes[:1], 1, None, plan.drain_timeout_s)
        bad = [r for r in ctx.records if not r.ok]
        say(f"[loadtest] warm-up: {len(ctx.records) - len(bad)} of {len(ctx.records)} requests ok"
            + (f"; first error: {bad[0].error_kind}: {bad[0].error}" if bad else ""))
    records: list[RequestRecord] = []
    for level in plan.levels:
        ctx = plan.context(level, scraper.t0, plan.level_requests(level))
        scraper.level = level
        before = scraper.snapshot()
        window, env = run_level(ctx, classes, level, plan.duration_s, plan.drain_timeout_s)
        gevent.sleep(0.3)  # the engine exports its gauges every 100 ms
        after = scraper.snapshot()
        scraper.level = None
        server = level_server_summary(before, after, scraper.level_rows(level), window.duration_s)
        entry = level_entry(level, window, ctx.records, server, env)
        run["levels"].append(entry)
        records.extend(ctx.records)
        say("[loadtest] " + describe_level(entry))
        write_outputs(out, run, records, scraper.rows)
    return records


def level_entry(level: int, window: LevelWindow, records: list[RequestRecord], server: dict[str, Any],
                env: Environment) -> dict[str, Any]:
    """A level's entry of run.json: the client's summary (overall and per protocol), the server's
    (``prometheus.level_server_summary``), Locust's counts and a few error samples."""
    by_protocol = {protocol: summarize([r for r in records if r.protocol == protocol], window).as_dict()
                   for protocol in sorted({r.protocol for r in records})}
    return {"concurrency": level, "start_s": window.start_s, "end_s": window.end_s,
            "client": summarize(records, window).as_dict(), "by_protocol": by_protocol,
            "server": server, "locust": locust_counts(env),
            "error_samples": sorted({f"{r.error_kind}: {r.error}" for r in records
                                     if not r.ok and not r.cancelled})[:10]}


def describe_level(level: dict[str, Any]) -> str:
    """A level's entry in a few lines for the console: the client's figures (TTFT by turn for chat
    sessions), the server's."""
    s = level["client"]
    ttft, itl, lat = s["ttft_s"], s["itl_s"], s["latency_s"]

    def ms(d: dict, key: str) -> str:
        v = d.get(key)
        return "-" if v is None else f"{v * 1000:.1f}"

    line = (f"c={level['concurrency']:>4}: {s['ok']} ok, {s['failed']} failed, {s['cancelled']} cancelled in "
            f"{s['duration_s']:.1f} s | {s['output_token_throughput']:.1f} out tok/s "
            f"({s['steady_output_token_throughput'] or 0:.1f} steady), "
            f"{s['request_throughput']:.2f} req/s | TTFT p50 {ms(ttft, 'p50')} p99 {ms(ttft, 'p99')} ms | "
            f"ITL p50 {ms(itl, 'p50')} p99 {ms(itl, 'p99')} ms | latency p50 {ms(lat, 'p50')} ms")
    turns = [(t, d["ttft_s"].get("p50")) for t, d in (s.get("ttft_by_turn") or {}).items()]
    if any(v is not None for _, v in turns):
        line += "\n        TTFT p50 by turn: " + ", ".join(f"{t}: {ms({'v': v}, 'v')} ms" for t, v in turns)
    srv = level.get("server", {})
    if srv.get("available"):
        e = srv["engine"]
        ens = srv["models"].get(c.ENSEMBLE, {})
        gen = e.get("generated_token_throughput")
        gen_text = "-" if gen is None else f"{gen:.1f}"
        line += (f"\n        server: ensemble {ens.get('success') or 0:.0f} ok / "
                 f"{ens.get('failure') or 0:.0f} failed, engine {gen_text} gen tok/s, batch mean "
                 f"{e.get('scheduled_mean') or 0:.1f} peak {e.get('scheduled_max') or 0:.0f}, waiting peak "
                 f"{e.get('waiting_max') or 0:.0f}")
        if e.get("prefix_hit_rate") is not None:
            line += (f", prefix cache hits {e['prefix_hit_rate']:.1%} of prompt tokens, "
                     f"{e.get('prefix_blocks') or 0:.0f} blocks cached")
    return line


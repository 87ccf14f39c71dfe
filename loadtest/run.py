"""Headless load test of the qwen-triton ensemble: a concurrency sweep, Locust's Python API, CSV + JSON.

    python -m loadtest.run --concurrency 1,4,16,64,256 --duration 60 --workload fixed \\
        --input-len 128 --output-len 128 --protocol http_stream --out logs/loadtest/run1
    python -m tools.loadtest_report logs/loadtest/run1        # the HTML report (also --report here)

For each level of concurrency c it starts c closed-loop Locust users (no wait between requests) and lets
them run until the level's time (``--duration``) or request count (``--requests``, or
``--requests-per-user`` times c) is used up, whichever comes first; then no request starts and the ones
in flight finish (up to ``--drain-timeout``; any still running then are cancelled and counted as such,
not as failures).  A level's duration runs from its start to its last completion.  Triton's metrics port
is scraped throughout (``--scrape-interval``).

The server is found at 127.0.0.1 on TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT (default
8000 / 8001 / 8002), or the --*-port flags.  Written into ``--out``:

* ``run.json`` -- the settings, the server's configuration, and per level the client summary (overall and
  per protocol), the server summary and Locust's own counts;
* ``summary.csv`` -- one row per level and protocol ("all" for the whole level), latencies in ms;
* ``requests.csv`` -- one row per request (``loadtest.metrics.RequestRecord``);
* ``server_timeseries.csv`` -- the engine's gauges and counters every scrape.

Exit status: 0 when the sweep ran (failed requests are data; ``--fail-on-errors`` makes them exit 3),
2 when the server was not ready.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # first: the users run on gevent (loadtest.users also tells gRPC about gevent)

import argparse
import csv
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment

from qwen_triton import wire
from qwen_triton.serving import contract as c

from .context import PROTOCOLS, LoadTestContext, Target
from .metrics import RECORD_FIELDS, LevelWindow, RequestRecord, flat_summary, summarize
from .prometheus import TIMESERIES_FIELDS, Snapshot, fetch, flat_server, level_server_summary, timeseries_row
from .users import USER_CLASSES, init_grpc_gevent
from .workloads import WORKLOADS, Workload, make_workload

ROOT = Path(__file__).resolve().parents[1]


class _QuietSpawnWarning(logging.Filter):
    """Locust warns about spawn rates above 100/s; here every user of a level starts at once on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "spawn rate is very high" not in record.getMessage()


logging.getLogger("locust.runners").addFilter(_QuietSpawnWarning())
DEFAULT_LEVELS = (1, 4, 16, 64, 256)
INPUT_SPECS = {spec.name: spec for spec in c.ENSEMBLE_INPUTS}


# ------------------------------------------------------------------------------------------- server
def http_json(url: str, timeout: float = 5.0) -> Any:
    """The JSON of a GET that answered 200, else None."""
    status, body = wire.http_get(url, timeout)
    try:
        return json.loads(body) if status == 200 else None
    except ValueError:
        return None


def server_info(target: Target) -> dict[str, Any]:
    """Triton's version and the engine model's settings, for the report (best effort)."""
    info: dict[str, Any] = {"http_url": target.http_url, "grpc_url": target.grpc_url,
                            "metrics_url": target.metrics_url, "model": target.model}
    meta = http_json(f"{target.http_url}/v2")
    if isinstance(meta, dict):
        info["triton_version"] = meta.get("version")
    engine = http_json(f"{target.http_url}/v2/models/{c.ENGINE}/config")
    if isinstance(engine, dict):
        params = {k: v.get("string_value") for k, v in (engine.get("parameters") or {}).items()
                  if isinstance(v, dict)}
        info["engine_backend"] = engine.get("backend")
        info["engine_max_batch_size"] = engine.get("max_batch_size")
        raw = params.get(c.PARAM_ENGINE_CONFIG)
        if raw:
            try:
                info["engine_config"] = json.loads(raw)
            except ValueError:
                info["engine_config"] = raw
        info["engine_parameters"] = {k: v for k, v in params.items() if k != c.PARAM_ENGINE_CONFIG}
    return info


class Scraper:
    """Scrapes the metrics port every ``interval`` seconds in a greenlet; rows carry the current level."""

    def __init__(self, ctx_t0: float, url: str, interval: float):
        self.t0 = ctx_t0
        self.url = url
        self.interval = interval
        self.level: int | None = None
        self.rows: list[dict[str, Any]] = []
        self.greenlet: gevent.Greenlet | None = None
        self.failures = 0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def snapshot(self) -> Snapshot:
        snap = fetch(self.url, self.now())
        if not snap.ok:
            self.failures += 1
        return snap

    def _loop(self) -> None:
        while True:
            snap = self.snapshot()
            if snap.ok:
                self.rows.append(timeseries_row(snap, self.level))
            gevent.sleep(self.interval)

    def start(self) -> None:
        if self.interval > 0:
            self.greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill()
            self.greenlet = None


# ---------------------------------------------------------------------------------------------- levels
def user_classes(protocols: Sequence[str]) -> list[type]:
    unknown = [p for p in protocols if p not in USER_CLASSES]
    if unknown:
        raise SystemExit(f"unknown protocol {', '.join(unknown)}; choose from {', '.join(PROTOCOLS)}")
    return [USER_CLASSES[p] for p in protocols]


def run_level(ctx: LoadTestContext, classes: list[type], concurrency: int, duration_s: float | None,
              drain_timeout_s: float) -> tuple[LevelWindow, Environment]:
    """Run one level until its time or request budget is used up, then drain; the level's window."""
    init_grpc_gevent()  # before the users' first channel
    env = Environment(user_classes=classes, catch_exceptions=True)
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
    total = env.stats.total
    return {"requests": total.num_requests, "failures": total.num_failures,
            "avg_response_ms": total.avg_response_time, "median_response_ms": total.median_response_time}


def _summaries(records: list[RequestRecord], window: LevelWindow) -> tuple[dict, dict[str, dict]]:
    overall = summarize(records, window).as_dict()
    by_protocol = {}
    for protocol in sorted({r.protocol for r in records}):
        by_protocol[protocol] = summarize([r for r in records if r.protocol == protocol], window).as_dict()
    return overall, by_protocol


def describe_level(level: dict[str, Any]) -> str:
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
    return line


# ---------------------------------------------------------------------------------------------- output
def write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str] | None = None) -> None:
    if fields is None:
        fields = []
        for row in rows:
            fields.extend(k for k in row if k not in fields)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def write_outputs(out: Path, run: dict[str, Any], records: list[RequestRecord],
                  series: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n", encoding="utf-8")
    rows = []
    for level in run["levels"]:
        base = {"concurrency": level["concurrency"], "protocol": "all"}
        rows.append({**base, **flat_summary(level["client"]), **flat_server(level.get("server", {}))})
        if len(level["by_protocol"]) > 1:
            for protocol, s in level["by_protocol"].items():
                rows.append({"concurrency": level["concurrency"], "protocol": protocol, **flat_summary(s)})
    write_csv(out / "summary.csv", rows)
    write_csv(out / "requests.csv", [r.as_row() for r in records], RECORD_FIELDS)
    write_csv(out / "server_timeseries.csv", series, TIMESERIES_FIELDS)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("locust", "gevent", "geventhttpclient", "tritonclient", "grpcio"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


# -------------------------------------------------------------------------------------------------- CLI
def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"concurrency must be comma-separated integers, got {text!r}") from None
    if not levels or any(n < 1 for n in levels):
        raise argparse.ArgumentTypeError("concurrency levels must be >= 1")
    return levels


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def key_values(items: Sequence[str], what: str) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{what} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("load")
    g.add_argument("--concurrency", type=parse_levels, default=list(DEFAULT_LEVELS),
                   help="comma-separated levels of concurrency (default 1,4,16,64,256)")
    g.add_argument("--duration", type=float, default=None,
                   help="seconds per level (default 60 unless a request count is given)")
    g.add_argument("--requests", type=int, default=None, help="requests per level")
    g.add_argument("--requests-per-user", type=int, default=None,
                   help="requests per level = this x concurrency")
    g.add_argument("--drain-timeout", type=float, default=120.0,
                   help="seconds to let in-flight requests finish at the end of a level (default 120)")
    g.add_argument("--warmup", type=int, default=2,
                   help="unrecorded requests before the first level (default 2)")
    g.add_argument("--protocol", default="http_stream",
                   help=f"comma-separated users, mixed evenly: {', '.join(PROTOCOLS)} (default http_stream)")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take (default 600)")
    g.add_argument("--think-time", type=float, default=0.0,
                   help="seconds between the turns of a chat session")
    w = p.add_argument_group("workload")
    w.add_argument("--workload", choices=sorted(WORKLOADS), default="fixed")
    w.add_argument("--input-len", type=int, default=None, help="fixed: prompt tokens (default 128)")
    w.add_argument("--output-len", type=int, default=None, help="fixed: output tokens, forced (default 128)")
    w.add_argument("--scale", type=float, default=None, help="sharegpt: multiply both length distributions")
    w.add_argument("--wl", action="append", default=[], metavar="KEY=VALUE",
                   help="any other workload setting, e.g. --wl max_turns=8 (see loadtest/workloads.py)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--temperature", type=float, default=None, help="sent with every request (default: none: "
                   "the server's default, greedy for the default build)")
    w.add_argument("--top-p", type=float, default=None)
    w.add_argument("--top-k", type=int, default=None)
    w.add_argument("--no-log-probs", action="store_true",
                   help="do not ask for log probs: tokens are then counted as one per non-empty response")
    w.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="any other ensemble input sent with every request, e.g. --input random_seed=1")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--http-port", type=int, default=wire.env_port("http"))
    s.add_argument("--grpc-port", type=int, default=wire.env_port("grpc"))
    s.add_argument("--metrics-port", type=int, default=wire.env_port("metrics"))
    s.add_argument("--model", default=c.ENSEMBLE)
    s.add_argument("--ready-timeout", type=float, default=30.0,
                   help="seconds to wait for the server (default 30)")
    s.add_argument("--scrape-interval", type=float, default=0.5,
                   help="seconds between scrapes of the metrics port (0: only at level edges)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=None, help="output folder (default logs/loadtest/<time>)")
    o.add_argument("--label", default="", help="a title for the report")
    o.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write report.html with tools/loadtest_report.py (default on)")
    o.add_argument("--fail-on-errors", action="store_true", help="exit 3 if any request failed")
    o.add_argument("-q", "--quiet", action="store_true")
    return p


def extra_inputs(args: argparse.Namespace) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for name, value in ((c.TEMPERATURE, args.temperature), (c.TOP_P, args.top_p), (c.TOP_K, args.top_k)):
        if value is not None:
            extra[name] = value
    # token counts come from output_log_probs, which upstream's contract returns only when asked;
    # replies leave the prompt out (upstream echoes it in replies that are not streamed)
    extra[c.RETURN_LOG_PROBS] = not args.no_log_probs
    extra[c.EXCLUDE_INPUT_IN_OUTPUT] = True
    for name, value in key_values(args.input, "--input").items():
        if name not in INPUT_SPECS:
            raise SystemExit(f"--input {name}: the ensemble has no such input")
        extra[name] = value
    return extra


def workload_of(args: argparse.Namespace) -> Workload:
    params: dict[str, Any] = key_values(args.wl, "--wl")
    if args.workload == "fixed":
        params.setdefault("input_len", args.input_len)
        params.setdefault("output_len", args.output_len)
    elif args.input_len is not None or args.output_len is not None:
        raise SystemExit("--input-len / --output-len are for --workload fixed")
    if args.scale is not None:
        params["scale"] = args.scale
    try:
        return make_workload(args.workload, **params)
    except (TypeError, ValueError) as exc:
        raise SystemExit(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    classes = user_classes(protocols)
    workload = workload_of(args)
    extra = extra_inputs(args)
    duration = args.duration
    if duration is None and args.requests is None and args.requests_per_user is None:
        duration = 60.0
    target = Target(args.host, args.http_port, args.grpc_port, args.metrics_port, args.model)
    out = args.out or ROOT / "logs" / "loadtest" / time.strftime("%Y%m%d-%H%M%S")
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    if not wire.wait_ready(target.http_url, args.ready_timeout):  # time.sleep is gevent's here
        print(f"[loadtest] the server at {target.http_url} is not ready (GET /v2/health/ready); start it "
              f"with `make serve` or set TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    scraper = Scraper(t0, target.metrics_url, args.scrape_interval)
    scraper.start()

    def context(level: int, **kw: Any) -> LoadTestContext:
        return LoadTestContext(target=target, workload=workload, level=level, seed=args.seed,
                               timeout_s=args.timeout, extra_inputs=extra, think_time_s=args.think_time,
                               t0=t0, **kw)

    run: dict[str, Any] = {
        "meta": {
            "label": args.label, "started_at": started_at,
            "argv": list(sys.argv[1:] if argv is None else argv),
            "protocols": protocols, "workload": workload.describe(), "concurrency": args.concurrency,
            "duration_s": duration, "requests": args.requests, "requests_per_user": args.requests_per_user,
            "warmup": args.warmup, "seed": args.seed, "extra_inputs": extra, "timeout_s": args.timeout,
            "host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "git_commit": git_commit(), "versions": versions(),
            "definitions": {
                "ttft": "send -> first response carrying an output token",
                "itl": "(latency - TTFT) / (output tokens - 1), first token excluded",
                "latency": "send -> last response",
                "output_token_throughput": "output tokens of successful requests / level duration",
                "steady_output_token_throughput": "output tokens that arrived before the drain / that time",
                "request_throughput": "successful requests / level duration",
                "level_duration": "the level's start -> its last completion",
                "output_tokens": "length of output_log_probs in each response (the engine's count)",
            },
        },
        "server": server_info(target),
        "levels": [],
    }
    records: list[RequestRecord] = []
    try:
        if args.warmup > 0:
            ctx = context(0, max_requests=args.warmup, record=True)
            run_level(ctx, classes[:1], 1, None, args.drain_timeout)
            bad = [r for r in ctx.records if not r.ok]
            say(f"[loadtest] warm-up: {len(ctx.records) - len(bad)} of {len(ctx.records)} requests ok"
                + (f"; first error: {bad[0].error_kind}: {bad[0].error}" if bad else ""))
        for level in args.concurrency:
            n = args.requests if args.requests is not None else (
                args.requests_per_user * level if args.requests_per_user is not None else None)
            ctx = context(level, max_requests=n)
            scraper.level = level
            before = scraper.snapshot()
            window, env = run_level(ctx, classes, level, duration, args.drain_timeout)
            gevent.sleep(0.3)  # the engine exports its gauges every 100 ms
            after = scraper.snapshot()
            scraper.level = None
            rows = [r for r in scraper.rows if r["level"] == level]
            overall, by_protocol = _summaries(ctx.records, window)
            entry = {
                "concurrency": level, "start_s": window.start_s, "end_s": window.end_s,
                "client": overall, "by_protocol": by_protocol,
                "server": level_server_summary(before, after, rows, window.duration_s),
                "locust": locust_counts(env),
                "error_samples": sorted({f"{r.error_kind}: {r.error}" for r in ctx.records
                                         if not r.ok and not r.cancelled})[:10],
            }
            run["levels"].append(entry)
            records.extend(ctx.records)
            say("[loadtest] " + describe_level(entry))
            write_outputs(out, run, records, scraper.rows)  # after every level: a partial run is readable
    finally:
        scraper.stop()
    run["meta"]["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run["meta"]["scrape_failures"] = scraper.failures
    write_outputs(out, run, records, scraper.rows)
    say(f"[loadtest] wrote {out}/run.json, summary.csv, requests.csv, server_timeseries.csv")
    if args.report and importlib.util.find_spec("matplotlib") is None:
        say(f"[loadtest] no matplotlib here: render the report where it is, "
            f"`python -m tools.loadtest_report {out}` (it needs only the files written above)")
    elif args.report:
        cmd = [sys.executable, str(ROOT / "tools" / "loadtest_report.py"), str(out)]
        if args.label:
            cmd += ["--title", args.label]
        if subprocess.run(cmd, check=False).returncode != 0:
            print("[loadtest] the report failed (the run's data is written)", file=sys.stderr)
    failed = sum(lv["client"]["failed"] for lv in run["levels"])
    return 3 if failed and args.fail_on_errors else 0


if __name__ == "__main__":
    sys.exit(main())

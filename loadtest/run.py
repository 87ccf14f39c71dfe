"""Headless load test of the qwen-triton ensemble: a concurrency sweep, Locust's Python API, CSV + JSON.

    python -m loadtest.run --concurrency 1,4,16,64,256 --duration 60 --workload fixed \\
        --input-len 128 --output-len 128 --protocol http_stream --out logs/loadtest/run1
    python -m loadtest.report logs/loadtest/run1        # the HTML report again (--report writes it here)

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
* ``server_timeseries.csv`` -- the engine's gauges and counters every scrape;
* ``report.html`` and ``plots/`` -- the report (:mod:`loadtest.report`, where matplotlib is installed).

This module is the command line; :mod:`loadtest.sweep` runs the levels, :mod:`loadtest.scrape` asks the
server, :mod:`loadtest.run_files` writes the files.

Exit status: 0 when the sweep ran (failed requests are data; ``--fail-on-errors`` makes them exit 3),
2 when the server was not ready.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as the program: gevent first, before anything imports ssl or threading
    from gevent import monkey  # (imported as a library it patches nothing; Locust's own import still does)

    monkey.patch_all()

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qwen_triton import wire
from qwen_triton.serving import contract as c

from .context import PROTOCOLS, Target
from .report import ReportOptions, write_report
from .run_files import ROOT, now_text, run_meta, write_outputs
from .scrape import Scraper, server_info
from .sweep import Say, SweepPlan, run_sweep, user_classes
from .workloads import WORKLOADS, Workload, make_workload

DEFAULT_LEVELS = (1, 4, 16, 64, 256)
INPUT_SPECS = {spec.name: spec for spec in c.ENSEMBLE_INPUTS}


def parse_levels(text: str) -> list[int]:
    """``1,4,16`` -> [1, 4, 16] (each at least 1)."""
    try:
        levels = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"concurrency must be comma-separated integers, got {text!r}") from None
    if not levels or any(n < 1 for n in levels):
        raise argparse.ArgumentTypeError("concurrency levels must be >= 1")
    return levels


def parse_value(text: str) -> Any:
    """A command-line value as JSON if it parses (numbers, booleans, lists), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def key_values(items: Sequence[str], what: str) -> dict[str, Any]:
    """``KEY=VALUE`` items of option ``what`` as a dict (values through :func:`parse_value`)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{what} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The runner's options."""
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
                   help="write report.html with loadtest.report (default on)")
    o.add_argument("--fail-on-errors", action="store_true", help="exit 3 if any request failed")
    o.add_argument("-q", "--quiet", action="store_true")
    return p


def extra_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The ensemble inputs sent with every request: sampling, log probs (the token count), --input."""
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
    """The workload the arguments name, with its settings."""
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


def plan_of(args: argparse.Namespace) -> SweepPlan:
    """The sweep the arguments ask for (SystemExit on a setting that makes no sense)."""
    protocols = tuple(p.strip() for p in args.protocol.split(",") if p.strip())
    user_classes(protocols)  # an unknown protocol fails here, before anything is sent
    duration = args.duration
    if duration is None and args.requests is None and args.requests_per_user is None:
        duration = 60.0
    target = Target(args.host, args.http_port, args.grpc_port, args.metrics_port, args.model)
    return SweepPlan(target=target, workload=workload_of(args), protocols=protocols,
                     levels=tuple(args.concurrency), duration_s=duration, requests=args.requests,
                     requests_per_user=args.requests_per_user, extra_inputs=extra_inputs(args),
                     warmup=args.warmup, drain_timeout_s=args.drain_timeout, seed=args.seed,
                     timeout_s=args.timeout, think_time_s=args.think_time)


def settings_meta(args: argparse.Namespace, argv: Sequence[str] | None, plan: SweepPlan) -> dict[str, Any]:
    """The sweep's settings as run.json's ``meta`` records them."""
    return {"label": args.label, "argv": list(sys.argv[1:] if argv is None else argv),
            "protocols": list(plan.protocols), "workload": plan.workload.describe(),
            "concurrency": list(plan.levels), "duration_s": plan.duration_s, "requests": plan.requests,
            "requests_per_user": plan.requests_per_user, "warmup": plan.warmup, "seed": plan.seed,
            "extra_inputs": dict(plan.extra_inputs), "timeout_s": plan.timeout_s}


def render_report(out: Path, label: str, say: Say) -> None:
    """report.html beside the run's files, where matplotlib is installed (a failure only says so)."""
    if importlib.util.find_spec("matplotlib") is None:
        say(f"[loadtest] no matplotlib here: render the report where it is, "
            f"`python -m loadtest.report {out}` (it needs only the files written above)")
        return
    try:
        path = write_report(out, ReportOptions(title=label or None))
    except Exception as exc:  # noqa: BLE001 -- the run's data is written; the report is a view of it
        print(f"[loadtest] the report failed (the run's data is written): {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return
    say(f"[loadtest-report] wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep the command line asks for; 0, 2 (server not ready) or 3 (failures, --fail-on-errors)."""
    args = build_parser().parse_args(argv)
    plan = plan_of(args)
    out = args.out or ROOT / "logs" / "loadtest" / time.strftime("%Y%m%d-%H%M%S")
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    if not wire.wait_ready(plan.target.http_url, args.ready_timeout):  # time.sleep is gevent's here
        print(f"[loadtest] the server at {plan.target.http_url} is not ready (GET /v2/health/ready); start "
              f"it with `make serve` or set TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT",
              file=sys.stderr)
        return 2
    scraper = Scraper(time.perf_counter(), plan.target.metrics_url, args.scrape_interval)
    run: dict[str, Any] = {"meta": run_meta(settings_meta(args, argv, plan)), "server": server_info(plan.target),
                           "levels": []}
    scraper.start()
    try:
        records = run_sweep(plan, scraper, run, out, say)
    finally:
        scraper.stop()
    run["meta"].update(finished_at=now_text(), scrape_failures=scraper.failures)
    write_outputs(out, run, records, scraper.rows)
    say(f"[loadtest] wrote {out}/run.json, summary.csv, requests.csv, server_timeseries.csv")
    if args.report:
        render_report(out, args.label, say)
    failed = sum(lv["client"]["failed"] for lv in run["levels"])
    return 3 if failed and args.fail_on_errors else 0


if __name__ == "__main__":
    sys.exit(main())

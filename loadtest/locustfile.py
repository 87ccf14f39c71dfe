"""The qwen-triton users for Locust's own command line and web UI.

    PYTHONPATH=. .venv/bin/locust -f loadtest/locustfile.py                    # web UI on http://localhost:8089
    PYTHONPATH=. .venv/bin/locust -f loadtest/locustfile.py --headless -u 16 -r 16 -t 60s --qt-output-len 64 \\
        --qt-out logs/loadtest/cli HttpStreamUser GrpcStreamUser

Pick users by class name (HttpStreamUser, GrpcStreamUser, HttpGenerateUser; all three if none is named).
Locust's statistics show each request's end-to-end latency (its "response time") and output tokens (its
"size"); ``--qt-out DIR`` also writes ``requests.csv`` and ``summary.json`` with TTFT, ITL and tokens/s
at the end.
The server is 127.0.0.1 at TRITON_HTTP_PORT / TRITON_GRPC_PORT (default 8000 / 8001); no ``--host`` needed.
At the end, requests in flight may finish (up to 120 s unless ``--stop-timeout`` says otherwise): cutting a
stream leaves it in flight in Triton's ensemble.  For concurrency sweeps, CSV/JSON and the HTML report use
``python -m loadtest.run`` instead.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from locust import events

from loadtest.context import LoadTestContext, Target
from loadtest.metrics import RECORD_FIELDS, summarize
from loadtest.users import GrpcStreamUser, HttpGenerateUser, HttpStreamUser, init_grpc_gevent
from loadtest.workloads import WORKLOADS, make_workload
from qwen_triton.wire import env_port

__all__ = ["GrpcStreamUser", "HttpGenerateUser", "HttpStreamUser"]
DEFAULT_STOP_TIMEOUT_S = 120.0


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("qwen-triton")
    group.add_argument("--qt-workload", choices=sorted(WORKLOADS), default="fixed", help="what to send")
    group.add_argument("--qt-input-len", type=int, default=128, help="fixed: prompt tokens")
    group.add_argument("--qt-output-len", type=int, default=128, help="fixed: output tokens (forced)")
    group.add_argument("--qt-scale", type=float, default=1.0,
                       help="sharegpt: scale both length distributions")
    group.add_argument("--qt-seed", type=int, default=0)
    group.add_argument("--qt-http-port", type=int, default=env_port("http"))
    group.add_argument("--qt-grpc-port", type=int, default=env_port("grpc"))
    group.add_argument("--qt-timeout", type=float, default=600.0, help="seconds one request may take")
    group.add_argument("--qt-out", default="", help="folder for requests.csv and summary.json at the end")


@events.init.add_listener
def _context(environment, **_kw) -> None:
    init_grpc_gevent()  # before the users' first channel
    opts = environment.parsed_options
    if opts is None:  # used as a library (loadtest.run sets environment.loadtest itself)
        return
    if opts.qt_workload == "fixed":
        workload = make_workload("fixed", input_len=opts.qt_input_len, output_len=opts.qt_output_len)
    elif opts.qt_workload == "sharegpt":
        workload = make_workload("sharegpt", scale=opts.qt_scale)
    else:
        workload = make_workload(opts.qt_workload)
    if not opts.stop_timeout:
        # let requests in flight finish when the run stops: a stream cut mid-way is left in flight by
        # Triton 2.51's ensemble until the server stops (seen here, HTTP SSE and gRPC alike)
        environment.stop_timeout = DEFAULT_STOP_TIMEOUT_S
    target = Target(http_port=opts.qt_http_port, grpc_port=opts.qt_grpc_port)
    environment.loadtest = LoadTestContext(target=target, workload=workload,
                                           level=max(1, opts.num_users or 1), seed=opts.qt_seed,
                                           timeout_s=opts.qt_timeout)


@events.quitting.add_listener
def _write(environment, **_kw) -> None:
    opts = environment.parsed_options
    ctx = getattr(environment, "loadtest", None)
    if opts is None or ctx is None or not opts.qt_out:
        return
    out = Path(opts.qt_out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "requests.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(RECORD_FIELDS))
        writer.writeheader()
        for record in ctx.records:
            writer.writerow({k: ("" if v is None else v) for k, v in record.as_row().items()})
    summary = summarize(ctx.records).as_dict()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"[loadtest] {summary['ok']} ok, {summary['failed']} failed; "
          f"{summary['output_token_throughput']:.1f} output tok/s; wrote {out}/requests.csv, summary.json")

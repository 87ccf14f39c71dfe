"""The files of a sweep (run.json, summary.csv, requests.csv, server_timeseries.csv) and the run's
description in run.json's ``meta``: settings, host, versions, commit, the metrics' definitions."""
from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .metrics import RECORD_FIELDS, RequestRecord, flat_summary
from .prometheus import TIMESERIES_FIELDS, flat_server

ROOT = Path(__file__).resolve().parents[1]
# What each measure of run.json means (written into it, so a run explains itself).
DEFINITIONS = MappingProxyType({
    "ttft": "send -> first response carrying an output token",
    "itl": "(latency - TTFT) / (output tokens - 1), first token excluded",
    "latency": "send -> last response",
    "output_token_throughput": "output tokens of successful requests / level duration",
    "steady_output_token_throughput": "output tokens that arrived before the drain / that time",
    "request_throughput": "successful requests / level duration",
    "level_duration": "the level's start -> its last completion",
    "output_tokens": "length of output_log_probs in each response (the engine's count)",
    "ttft_by_turn": "TTFT of the successful requests per turn of a chat session (turn n re-sends n - 1 "
                    "exchanges); empty for one-shot workloads",
    "prefix_hit_rate": "prompt tokens whose KV came from the prefix cache / prompt tokens looked up, "
                       "over the level (the engine's counters)",
})


def now_text() -> str:
    """The local time as run.json writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_meta(settings: Mapping[str, Any]) -> dict[str, Any]:
    """run.json's ``meta``: the sweep's ``settings`` (label, argv, protocols, workload, levels, bounds...)
    with the start time, the client host, the commit, the versions and the definitions."""
    return {**settings, "started_at": now_text(), "host": platform.node(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "git_commit": git_commit(), "versions": versions(),
            "definitions": dict(DEFINITIONS)}


def write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str] | None = None) -> None:
    """Rows as CSV (None as empty); the columns are ``fields``, or every key in the order first seen."""
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
    """Every file of the run so far into ``out``."""
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
    """The checkout's short commit, if it is one."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Python's and the client libraries' versions."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("locust", "gevent", "geventhttpclient", "tritonclient", "grpcio"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out

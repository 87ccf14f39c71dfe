"""A run's folder: the files ``loadtest.run`` wrote, read back, and the report written beside them."""
from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TITLE = "qwen-triton load test"


def read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV the runner wrote, values back to numbers and booleans (empty: None); [] if absent."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _num(v: str | None) -> Any:
    if v is None or v == "":
        return None
    if v in ("True", "False"):
        return v == "True"
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def get(d: Any, *path: Any) -> Any:
    """``d[path[0]][path[1]]...``, or None where a step is missing or not a dict."""
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


@dataclass(frozen=True)
class RunFiles:
    """What a run wrote: ``run`` (run.json), ``requests`` (requests.csv rows), ``series``
    (server_timeseries.csv rows)."""

    run: dict[str, Any]
    requests: list[dict[str, Any]]
    series: list[dict[str, Any]]

    @classmethod
    def load(cls, run_dir: Path) -> RunFiles:
        """Read RUN_DIR; FileNotFoundError without run.json (the CSVs may be missing)."""
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        return cls(run, read_csv(run_dir / "requests.csv"), read_csv(run_dir / "server_timeseries.csv"))


@dataclass(frozen=True)
class ReportOptions:
    """How to render: ``title`` (default: the run's label), ``offline`` ({"<concurrency>": output tok/s}
    of the offline engine, target T3), ``step_ms`` (the engine's batch-1 step, target T5), ``out`` (default
    RUN_DIR/report.html), ``plots`` (also write RUN_DIR/plots/*.png)."""

    title: str | None = None
    offline: Mapping[str, float] | None = None
    step_ms: float | None = None
    out: Path | None = None
    plots: bool = True


def write_report(run_dir: Path, options: ReportOptions | None = None) -> Path:
    """Render RUN_DIR's report.html (and plots/*.png); its path.  Needs matplotlib (imported here, lazily)."""
    from .page import build_html  # matplotlib and numpy: only when a page is rendered

    options = options or ReportOptions()
    files = RunFiles.load(run_dir)
    title = options.title or get(files.run, "meta", "label") or DEFAULT_TITLE
    page = build_html(files, title, options.offline, options.step_ms,
                      run_dir / "plots" if options.plots else None)
    out = options.out or run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out

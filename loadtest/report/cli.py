"""The command line of the report: ``python -m loadtest.report RUN_DIR [options]``."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .rundir import ReportOptions, write_report


def build_parser() -> argparse.ArgumentParser:
    """The report's options."""
    p = argparse.ArgumentParser(prog="python -m loadtest.report",
                                description="HTML report of a qwen-triton load test run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default RUN_DIR/report.html")
    p.add_argument("--title", default=None)
    p.add_argument("--offline", type=Path, default=None,
                   help='JSON {"<concurrency>": output tok/s} of the offline engine (target T3)')
    p.add_argument("--batch1-step-ms", type=float, default=None, help="the engine's batch-1 step (target T5)")
    p.add_argument("--no-plots-dir", action="store_true", help="do not also write plots/*.png")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Render RUN_DIR's report; 0, or 1 without run.json."""
    args = build_parser().parse_args(argv)
    if not (args.run_dir / "run.json").exists():
        print(f"[loadtest-report] no run.json in {args.run_dir}", file=sys.stderr)
        return 1
    offline = None
    if args.offline:
        offline = {str(k): float(v) for k, v in json.loads(args.offline.read_text()).items()}
    out = write_report(args.run_dir, ReportOptions(args.title, offline, args.batch1_step_ms, args.out,
                                                   not args.no_plots_dir))
    print(f"[loadtest-report] wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0

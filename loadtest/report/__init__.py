"""The HTML report of a load test run (``python -m loadtest.run``): one self-contained page.

    python -m loadtest.report RUN_DIR [--out RUN_DIR/report.html] [--title TEXT]
        [--offline offline.json] [--batch1-step-ms 4.2]

Reads ``run.json``, ``requests.csv`` and ``server_timeseries.csv`` from RUN_DIR and writes ``report.html``
(the plots are matplotlib PNGs embedded as base64, so the page is one file) and the same PNGs under
``RUN_DIR/plots/``.  The page shows: headline numbers; throughput and latency percentiles against
concurrency; latency distributions per level; throughput against latency; the server's view (engine
batch, queue and KV cache over the run, Triton's queue times per model); tables of everything; the errors;
and, when given, the targets T3 (``offline``: ``{"<concurrency>": offline output tok/s}``, Triton should
reach 90% of it) and T5 (TTFT p50 at the lowest level <= 30 ms; ``step_ms``: ITL p50 <= 1.1x the batch-1
step).

The parts: :mod:`.rundir` (the run's files read back, the report written), :mod:`.page` (the page and its
sections), :mod:`.tables` (cards, tables, targets, settings), :mod:`.findings` (the sentences at the
top), :mod:`.charts` (style and axes), :mod:`.client_plots` and :mod:`.server_plots` (the figures),
:mod:`.cli` (the command line).  Needs numpy and matplotlib, imported only when a page is rendered; no
gevent, no Locust, so a run fetched from another machine renders anywhere.
"""
from .rundir import ReportOptions, RunFiles, write_report

__all__ = ["ReportOptions", "RunFiles", "write_report"]

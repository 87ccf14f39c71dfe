#!/usr/bin/env python3
"""The HTML report of a load test run (``python -m loadtest.run``): one self-contained page.

    python -m tools.loadtest_report RUN_DIR [--out RUN_DIR/report.html] [--title TEXT]
        [--offline offline.json] [--batch1-step-ms 4.2]

Reads ``run.json``, ``requests.csv`` and ``server_timeseries.csv`` from RUN_DIR and writes
``report.html`` (the plots are matplotlib PNGs embedded as base64, so the page is one file) and the same
PNGs under ``RUN_DIR/plots/``.  The page shows: headline numbers; throughput and latency percentiles
against concurrency; latency distributions per level; throughput against latency; the server's view
(engine batch, queue and KV cache over the run, Triton's queue times per model); tables of everything; the
errors; and, when given, the targets T3 (``--offline``: JSON ``{"<concurrency>": offline output tok/s}``,
Triton should reach 90% of it) and T5 (TTFT p50 at the lowest level <= 30 ms; ``--batch1-step-ms``: ITL
p50 <= 1.1x the batch-1 step).

Needs only numpy and matplotlib (no gevent, no Locust).
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import itertools
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from qwen_triton.serving import contract as c  # the model and metric names

ENSEMBLE, ENGINE, PRE, POST = c.ENSEMBLE, c.ENGINE, c.PREPROCESSING, c.POSTPROCESSING

# A calm palette: one hue per percentile, one per protocol.
INK = "#1f2933"
MUTED = "#7b8794"
GRID = "#e4e7eb"
P_COLORS = {"p50": "#2563eb", "p90": "#f59e0b", "p99": "#dc2626"}
C_CLIENT, C_SERVER, C_REQ = "#2563eb", "#10b981", "#8b5cf6"
C_ITL, C_TTFT = "#334155", "#f59e0b"
PROTO_COLORS = {"http_stream": "#2563eb", "grpc_stream": "#10b981", "http": "#f59e0b"}
PROTO_NAMES = {"http_stream": "HTTP SSE", "grpc_stream": "gRPC stream", "http": "HTTP (non-streaming)"}
DPI = 110

plt.rcParams.update({
    "font.family": "DejaVu Sans", "font.size": 10, "axes.edgecolor": "#cbd2d9", "axes.labelcolor": INK,
    "axes.titlesize": 11.5, "axes.titleweight": "bold", "axes.titlecolor": INK, "axes.titlelocation": "left",
    "axes.titlepad": 10, "axes.grid": True, "grid.color": GRID, "grid.linewidth": 0.8, "axes.axisbelow": True,
    "axes.spines.top": False, "axes.spines.right": False, "xtick.color": MUTED, "ytick.color": MUTED,
    "xtick.labelcolor": INK, "ytick.labelcolor": INK, "legend.frameon": False, "legend.fontsize": 9,
    "figure.facecolor": "white", "savefig.facecolor": "white", "lines.linewidth": 2.0, "lines.markersize": 6,
})


# ------------------------------------------------------------------------------------------------ input
def read_csv(path: Path) -> list[dict[str, Any]]:
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
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


# --------------------------------------------------------------------------------------------- helpers
def fmt(v: Any, digits: int = 1, scale: float = 1.0, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (int, float)):
        x = v * scale
        if abs(x) >= 10000:
            s = f"{x:,.0f}"
        elif digits == 0:
            s = f"{x:.0f}"
        else:
            s = f"{x:,.{digits}f}"
        return s + unit
    return html.escape(str(v))


def ms(v: Any, digits: int = 1) -> str:
    return fmt(v, digits, 1000.0)


def png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return buf.getvalue()


def level_axis(ax: plt.Axes, levels: Sequence[int]) -> None:
    """x axis of concurrency: log 2 with a tick at each level."""
    if len(levels) > 1 and max(levels) / max(min(levels), 1) >= 4:
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(levels) / 1.3, max(levels) * 1.3)
    else:
        span = max(levels) - min(levels) or 1
        ax.set_xlim(min(levels) - 0.15 * span - 0.5, max(levels) + 0.15 * span + 0.5)
    ax.set_xticks(list(levels))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("concurrent users")


def nice_log_ticks(lo: float, hi: float) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k, fewer or more as the range asks) covering [lo, hi]."""
    lo, hi = max(lo, 1e-9), max(hi, lo * 1.0001)
    for mantissas in ((1, 2, 5), (1, 3), (1,), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                 for m in mantissas]
        inside = [t for t in ticks if lo <= t <= hi]
        if 3 <= len(inside) <= 8 or mantissas == (1, 1.5, 2, 3, 5, 7):
            return inside
    return inside  # pragma: no cover


def _tick_label(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g}k" if v % 1000 else f"{v / 1000:.0f}k"
    return f"{v:g}"


def log_axis(axis: Any, values: Sequence[float]) -> None:
    """A log scale with round, plainly written ticks for one axis (ax.yaxis / ax.xaxis)."""
    vals = [v for v in values if v is not None and v > 0]
    axis.axes.set_yscale("log") if axis is axis.axes.yaxis else axis.axes.set_xscale("log")
    lo, hi = min(vals) / 1.3, max(vals) * 1.3
    ticks = nice_log_ticks(lo, hi)
    (axis.axes.set_ylim if axis is axis.axes.yaxis else axis.axes.set_xlim)(lo, hi)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda y, _: _tick_label(y)))
    axis.set_minor_locator(NullLocator())


def ms_axis(ax: plt.Axes, values: Sequence[float]) -> None:
    """y axis in ms; log scale when the values span more than 30x."""
    vals = [v for v in values if v is not None and v > 0]
    if vals and max(vals) / min(vals) > 30:
        log_axis(ax.yaxis, vals)
        ax.set_ylabel("ms (log scale)")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("ms")


def title_legend(ax: plt.Axes, handles: list | None = None, ncol: int = 3) -> None:
    """The legend on the title's line, right-aligned, so it never covers data."""
    kw = {"handles": handles} if handles else {}
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=ncol, borderaxespad=0.2,
              handlelength=1.6, columnspacing=1.2, **kw)


def _series(levels_data: list[dict], *path: str, scale: float = 1.0) -> list[float | None]:
    out = []
    for lv in levels_data:
        v = get(lv, *path)
        out.append(None if v is None else v * scale)
    return out


def _plot_line(ax, xs, ys, **kw) -> None:
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if pts:
        kw.setdefault("marker", "o")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], **kw)


def _annotate_points(ax, xs, ys, fmt_fn: Callable[[float], str], color: str) -> None:
    for x, y in zip(xs, ys):
        if y is not None:
            ax.annotate(fmt_fn(y), (x, y), textcoords="offset points", xytext=(0, 8), ha="center",
                        fontsize=8.5, color=color)


# ------------------------------------------------------------------------------------------------ plots
def plot_throughput(levels_data: list[dict]) -> bytes:
    """Output tokens/s and requests/s against concurrency, and (with two levels or more) latency against
    throughput."""
    levels = [lv["concurrency"] for lv in levels_data]
    pts = [(get(lv, "client", "output_token_throughput"), get(lv, "client", "itl_s", "p50"),
            get(lv, "client", "ttft_s", "p50"), lv["concurrency"]) for lv in levels_data]
    pts = [p for p in pts if p[0] and p[1] is not None]
    tradeoff = len(pts) >= 2
    fig, axes = plt.subplots(1, 3 if tradeoff else 2, figsize=(11, 3.8), gridspec_kw={"wspace": 0.3})
    a1, a2 = axes[0], axes[1]
    client = _series(levels_data, "client", "output_token_throughput")
    server = _series(levels_data, "server", "engine", "generated_token_throughput")
    _plot_line(a1, levels, client, color=C_CLIENT, label="client: output tokens / s", zorder=3)
    steady = _series(levels_data, "client", "steady_output_token_throughput")
    if any(v is not None for v in steady):
        _plot_line(a1, levels, steady, color=C_CLIENT, linestyle=":", marker="^", markersize=4, linewidth=1.4,
                   alpha=0.8, label="client, before the drain")
    if any(v is not None for v in server):
        _plot_line(a1, levels, server, color=C_SERVER, linestyle="--", marker="s", markersize=4,
                   linewidth=1.5, label="server: tokens the engine generated / s")
    _annotate_points(a1, levels, client, lambda v: f"{v:,.0f}", C_CLIENT)
    a1.set_title("Output tokens / s", pad=10)
    a1.set_ylim(bottom=0, top=max([v for v in client + server + steady if v] or [1]) * 1.2)
    level_axis(a1, levels)
    reqs = _series(levels_data, "client", "request_throughput")
    _plot_line(a2, levels, reqs, color=C_REQ, label="client: requests / s")
    _annotate_points(a2, levels, reqs, lambda v: f"{v:.2f}", C_REQ)
    a2.set_title("Requests / s", pad=10)
    a2.set_ylim(bottom=0, top=max([v for v in reqs if v] or [1]) * 1.2)
    level_axis(a2, levels)
    if tradeoff:
        ax = axes[2]
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] * 1000 for p in pts], marker="o", color=C_ITL, label="ITL p50")
        if all(p[2] is not None for p in pts):
            ax.plot(xs, [p[2] * 1000 for p in pts], marker="s", markersize=5, color=C_TTFT,
                    linestyle="--", linewidth=1.5, label="TTFT p50")
        for i, (x, y, _, lv) in enumerate(pts):  # alternate sides: neighbours at saturation sit close
            ax.annotate(f"{lv}", (x, y * 1000), textcoords="offset points", xytext=(6, -12 if i % 2 else 5),
                        fontsize=8.5, color=MUTED)
        ax.set_title("Latency against throughput", pad=10)
        ax.set_xlabel("output tokens / s  (points: users)")
        ax.set_xlim(left=0, right=max(xs) * 1.15)
        ms_axis(ax, [p[1] * 1000 for p in pts] + [p[2] * 1000 for p in pts if p[2] is not None])
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1.06), ncol=len(handles))
    return png(fig)


def plot_latency(levels_data: list[dict]) -> bytes:
    levels = [lv["concurrency"] for lv in levels_data]
    metrics = [("ttft_s", "Time to first token"), ("itl_s", "Inter-token latency"),
               ("latency_s", "Request latency (end to end)")]
    metrics = [m for m in metrics if any(get(lv, "client", m[0], "p50") is not None for lv in levels_data)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(11, 3.8), gridspec_kw={"wspace": 0.28}, squeeze=False)
    for ax, (key, title) in zip(axes[0], metrics):
        allv = []
        p50 = _series(levels_data, "client", key, "p50", scale=1000)
        p99 = _series(levels_data, "client", key, "p99", scale=1000)
        band = [(x, lo, hi) for x, lo, hi in zip(levels, p50, p99) if lo is not None and hi is not None]
        if band:
            ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                            color=P_COLORS["p50"], alpha=0.07, linewidth=0)
        for q in ("p50", "p90", "p99"):
            ys = _series(levels_data, "client", key, q, scale=1000)
            allv += [y for y in ys if y is not None]
            _plot_line(ax, levels, ys, color=P_COLORS[q], label=q)
        ax.set_title(title, pad=10)
        level_axis(ax, levels)
        ms_axis(ax, allv)
    handles = [plt.Line2D([], [], color=P_COLORS[q], marker="o", label=q) for q in ("p50", "p90", "p99")]
    handles.append(matplotlib.patches.Patch(color=P_COLORS["p50"], alpha=0.1, label="p50 to p99"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.06), ncol=4)
    return png(fig)


def plot_distributions(levels_data: list[dict], requests: list[dict]) -> bytes | None:
    levels = [lv["concurrency"] for lv in levels_data]
    ok = [r for r in requests if r.get("ok")]
    keys = [(k, t) for k, t in (("ttft_s", "Time to first token"), ("itl_s", "Inter-token latency"),
                                ("latency_s", "Request latency"))
            if any(r.get(k) is not None for r in ok)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(11, 3.8), gridspec_kw={"wspace": 0.28}, squeeze=False)
    for ax, (key, title) in zip(axes[0], keys):
        data, pos = [], []
        for i, level in enumerate(levels):
            vals = [r[key] * 1000 for r in ok if r.get("level") == level and r.get(key) is not None]
            if vals:
                data.append(vals)
                pos.append(i)
        if not data:
            continue
        flat = [v for d in data for v in d]
        use_log = min(flat) > 0 and max(flat) / min(flat) > 30
        tr = (lambda a: np.log10(np.asarray(a))) if use_log else (lambda a: np.asarray(a))
        parts = ax.violinplot([tr(d) for d in data], positions=pos, widths=0.8, showextrema=False)
        for body in parts["bodies"]:
            body.set_facecolor(C_CLIENT)
            body.set_edgecolor("none")
            body.set_alpha(0.28)
        for p, d in zip(pos, data):
            q50, q90, q99 = np.percentile(d, [50, 90, 99])
            ax.hlines(tr([q50]), p - 0.3, p + 0.3, color=P_COLORS["p50"], linewidth=2.2)
            ax.hlines(tr([q99]), p - 0.2, p + 0.2, color=P_COLORS["p99"], linewidth=1.6)
            ax.hlines(tr([q90]), p - 0.2, p + 0.2, color=P_COLORS["p90"], linewidth=1.4)
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([str(lv) for lv in levels])
        ax.set_xlim(-0.6, len(levels) - 0.4)
        ax.set_xlabel("concurrent users")
        ax.grid(axis="x", visible=False)
        if use_log:
            lo, hi = min(flat) / 1.3, max(flat) * 1.3
            ax.set_ylim(math.log10(lo), math.log10(hi))
            ticks = nice_log_ticks(lo, hi)
            ax.yaxis.set_major_locator(FixedLocator([math.log10(t) for t in ticks]))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: _tick_label(round(10 ** y, 6))))
            ax.set_ylabel("ms (log scale)")
        else:
            ax.set_ylim(bottom=0)
            ax.set_ylabel("ms")
        ax.set_title(title, pad=10)
    handles = [plt.Line2D([], [], color=P_COLORS[q], linewidth=2, label=q) for q in ("p50", "p90", "p99")]
    handles.append(matplotlib.patches.Patch(color=C_CLIENT, alpha=0.28, label="distribution of requests"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.06), ncol=4)
    return png(fig)


def plot_server_timeline(levels_data: list[dict], series: list[dict]) -> bytes | None:
    rows = [r for r in series if r.get("t_s") is not None]
    if not rows or all(r.get("active") is None for r in rows):
        return None
    t = np.array([r["t_s"] for r in rows], dtype=float)

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])

    has_gpu = not np.all(np.isnan(col("gpu_util")))
    n = 4 if has_gpu else 3
    fig, axes = plt.subplots(n, 1, figsize=(11, 1.9 * n + 0.6), sharex=True, gridspec_kw={"hspace": 0.35})
    ax = axes[0]
    sched, waiting = col("scheduled"), col("waiting")
    if np.all(np.isnan(sched)):  # a server without the scheduled gauge: active is the best we have
        sched = col("active")
    total = sched + np.nan_to_num(waiting)
    ax.fill_between(t, 0, sched, step="post", color=C_CLIENT, alpha=0.35, linewidth=0,
                    label="running (in the batch)")
    ax.fill_between(t, sched, total, step="post", color=P_COLORS["p99"], alpha=0.25, linewidth=0,
                    label="waiting (queued by the engine)")
    if np.nanmax(np.nan_to_num(waiting)) > 0:
        ax.step(t, total, where="post", color=P_COLORS["p99"], linewidth=1.2)
    ax.step(t, sched, where="post", color=C_CLIENT, linewidth=1.5)
    ax.set_title("Requests in the engine", pad=22)
    ax.set_ylabel("requests")
    ax.set_ylim(0, max(1.0, float(np.nanmax(total)) * 1.12) if not np.all(np.isnan(total)) else 1.0)
    title_legend(ax, ncol=2)
    ax = axes[1]
    kv_max = col("kv_max")
    kv = 100.0 * col("kv_used") / np.where(kv_max > 0, kv_max, np.nan)
    ax.fill_between(t, 0, kv, step="post", color=C_SERVER, alpha=0.25, linewidth=0)
    ax.step(t, kv, where="post", color=C_SERVER)
    blocks = np.nanmax(kv_max) if not np.all(np.isnan(kv_max)) else None
    ax.set_title("KV cache in use" + (f" (of {blocks:,.0f} blocks)" if blocks else ""), pad=8)
    ax.set_ylabel("% of blocks")
    ax.set_ylim(0, max(5.0, float(np.nanmax(kv)) * 1.15) if not np.all(np.isnan(kv)) else 100)
    ax = axes[2]
    gen = col("generated_tokens")
    dt = np.diff(t)
    rate = np.where(dt > 0, np.diff(gen) / np.where(dt > 0, dt, 1), np.nan)
    rate = np.where(rate < 0, np.nan, rate)
    if len(rate):
        ax.fill_between(t[1:], 0, rate, step="pre", color=C_REQ, alpha=0.2, linewidth=0)
        ax.step(t[1:], rate, where="pre", color=C_REQ)
    ax.set_title("Tokens generated by the engine")
    ax.set_ylabel("tokens / s")
    ax.set_ylim(bottom=0)
    if has_gpu:
        ax = axes[3]
        ax.step(t, col("gpu_util") * 100.0, where="post", color="#0ea5e9")
        ax.set_title("GPU utilization")
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)
    axes[-1].set_xlabel("seconds since the start of the run")
    for lv in levels_data:
        for a in axes:
            a.axvspan(lv["start_s"], lv["end_s"], color="#eef0f3", zorder=0, linewidth=0)
        axes[-1].annotate(f"c={lv['concurrency']}", ((lv["start_s"] + lv["end_s"]) / 2, 0.0),
                          xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8.5,
                          color=MUTED, annotation_clip=False, xytext=(0, 3), textcoords="offset points")
    axes[0].set_xlim(left=0)
    return png(fig)


def plot_queue(levels_data: list[dict]) -> bytes | None:
    levels = [lv["concurrency"] for lv in levels_data]
    models = [(PRE, "preprocessing", "#f59e0b"), (ENGINE, "engine", C_CLIENT),
              (POST, "postprocessing", C_SERVER)]
    found = [m for m in models if any(get(lv, "server", "models", m[0], "avg_queue_ms") is not None
                                      for lv in levels_data)]
    if not found:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.9))
    allq = []
    for model, name, color in found:
        q = _series(levels_data, "server", "models", model, "avg_queue_ms")
        allq += [v for v in q if v is not None]
        _plot_line(ax, levels, q, color=color, label=name, markersize=5)
    ax.set_title("Triton queue time, mean per request", pad=24)
    level_axis(ax, levels)
    ms_axis(ax, allq)
    title_legend(ax, ncol=3)
    return png(fig)


# ------------------------------------------------------------------------------------------------- HTML
CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f7f8fa; --accent:#2563eb; --ok:#059669;
        --bad:#dc2626; --warn:#d97706; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 28px 60px; }
header h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
header .sub { color: var(--muted); margin: 0 0 2px; }
h2 { font-size: 18px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 20px 0 8px; color: var(--muted); text-transform: uppercase;
     letter-spacing: .04em; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(165px, 1fr)); gap: 12px;
         margin: 22px 0 8px; }
.card { background: white; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 26px; font-weight: 650; margin-top: 2px; font-variant-numeric: tabular-nums; }
.card .value small { font-size: 14px; font-weight: 500; color: var(--muted); margin-left: 3px; }
.card .note { color: var(--muted); font-size: 12px; }
.card.ok .value { color: var(--ok); } .card.bad .value { color: var(--bad); }
figure { margin: 10px 0 18px; background: white; border: 1px solid var(--line); border-radius: 10px;
         padding: 12px; }
figure img { width: 100%; height: auto; display: block; }
figure figcaption { color: var(--muted); font-size: 12.5px; margin: 8px 4px 0; }
.row { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; align-items: start; }
.row figure { margin: 10px 0 18px; }
.tablewrap { overflow-x: auto; background: white; border: 1px solid var(--line); border-radius: 10px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; font-size: 13px; }
th, td { padding: 6px 10px; text-align: right; white-space: nowrap; }
th { background: #f1f3f5; font-weight: 600; color: var(--muted); font-size: 12px; }
thead tr.group th { background: white; color: var(--ink); border-bottom: 1px solid var(--line);
                    text-align: center; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr:hover { background: #eef4ff; }
td.bad { color: var(--bad); font-weight: 600; } td.ok { color: var(--ok); }
.sep { border-left: 1px solid var(--line); }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; background: white;
          border: 1px solid var(--line); border-radius: 10px; padding: 14px 18px; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; word-break: break-word; }
code { background: #eef1f4; padding: 1px 5px; border-radius: 4px; font-size: 12.5px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600; }
.badge.ok { background: #d1fae5; color: #065f46; } .badge.bad { background: #fee2e2; color: #991b1b; }
.badge.info { background: #e0e7ff; color: #3730a3; }
ul.errors { background: white; border: 1px solid var(--line); border-radius: 10px;
            padding: 12px 12px 12px 32px; }
ul.errors li { font-family: ui-monospace, Menlo, monospace; font-size: 12.5px; margin: 3px 0; }
p.note { color: var(--muted); font-size: 13px; }
.findings { background: white; border: 1px solid var(--line); border-left: 4px solid var(--accent);
            border-radius: 10px; padding: 12px 18px; margin: 14px 0 6px; }
.findings ul { margin: 6px 0 0; padding-left: 20px; } .findings li { margin: 3px 0; }
.card.notes { font-size: 13px; margin: 10px 0 18px; } .card.notes ul { padding-left: 18px; margin: 6px 0 0; }
.card.notes li { margin: 4px 0; color: var(--muted); }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


CAPTIONS = {
    "throughput": (
        "Left: output tokens per second of all successful requests over each level's duration (its start to "
        "its last completion). Dotted: the tokens that arrived while every user was still in the loop, "
        "per second of that time (the steady rate, without the tail of the last requests). Dashed: the "
        "tokens the engine itself generated over the level (its <code>generated_tokens</code> counter); it "
        "agrees with the client when the client counts every token and nothing else runs on the server. "
        "Middle: completed requests per second. Right: what more users buy in throughput and cost in latency "
        "(each point is a level)."),
    "latency": (
        "p50 / p90 / p99 over the successful requests of each level (shaded: p50 to p99). TTFT: send to the "
        "first response carrying a token. ITL: (latency &minus; TTFT) / (output tokens &minus; 1), the first "
        "token excluded. Latency: send to the last response."),
    "distributions": ("The distribution of each request's value per level (violins), with p50, p90 and p99 "
                      "marked."),
}


def img_tag(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def figure(data: bytes | None, alt: str, caption: str) -> str:
    if data is None:
        return ""
    return f"<figure>{img_tag(data, alt)}<figcaption>{caption}</figcaption></figure>"


def card(label: str, value: str, unit: str = "", note: str = "", cls: str = "") -> str:
    unit_html = f"<small>{html.escape(unit)}</small>" if unit else ""
    return (f'<div class="card {cls}"><div class="label">{html.escape(label)}</div>'
            f'<div class="value">{value}{unit_html}</div><div class="note">{note}</div></div>')


def table(groups: list[tuple[str, int]] | None, headers: list[str], rows: list[list[str]],
          seps: Sequence[int] = ()) -> str:
    def cell(tag: str, i: int, text: str) -> str:
        cls = ' class="sep"' if i in seps else ""
        if text.startswith(("<td", "<th")):
            return text
        return f"<{tag}{cls}>{text}</{tag}>"

    out = ['<div class="tablewrap"><table><thead>']
    if groups:
        out.append('<tr class="group">' + "".join(
            f'<th colspan="{n}"{" class=sep" if i else ""}>{html.escape(g)}</th>'
            for i, (g, n) in enumerate(groups))
            + "</tr>")
    out.append("<tr>" + "".join(cell("th", i, h) for i, h in enumerate(headers)) + "</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def client_table(levels_data: list[dict], key: str = "client", label_fn=None) -> str:
    headers = ["concurrency", "ok", "failed", "out tok/s", "steady", "req/s", "out tok / req",
               "p50", "p90", "p99", "p50", "p90", "p99", "p50", "p90", "p99"]
    groups = [("", 7), ("TTFT (ms)", 3), ("ITL (ms)", 3), ("latency (ms)", 3)]
    rows = []
    for lv in levels_data:
        s = lv[key] if label_fn is None else label_fn(lv)
        if s is None:
            continue
        failed = s.get("failed", 0)
        rows.append([
            str(lv["concurrency"]) if label_fn is None else lv["_label"],
            fmt(s.get("ok"), 0),
            f'<td class="{"bad" if failed else "ok"}">{failed}</td>',
            fmt(s.get("output_token_throughput"), 1), fmt(s.get("steady_output_token_throughput"), 1),
            fmt(s.get("request_throughput"), 2), fmt(s.get("mean_output_tokens"), 1),
            *[ms(get(s, m, q)) for m in ("ttft_s", "itl_s", "latency_s") for q in ("p50", "p90", "p99")],
        ])
    return table(groups, headers, rows, seps=(7, 10, 13))


def server_table(levels_data: list[dict]) -> str:
    headers = ["concurrency", "ensemble ok", "ensemble failed", "gen tok/s", "tok / step", "batch mean",
               "batch peak", "waiting peak", "KV peak", "preempt.", "ensemble", "pre", "engine", "post"]
    groups = [("", 1), ("Triton", 2), ("engine (its own gauges)", 7), ("mean queue time (ms)", 4)]
    rows = []
    for lv in levels_data:
        srv = lv.get("server") or {}
        if not srv.get("available"):
            rows.append([str(lv["concurrency"])] + ["–"] * (len(headers) - 1))
            continue
        e, m = srv["engine"], srv["models"]
        fail = get(m, ENSEMBLE, "failure") or 0
        reasons = get(m, ENSEMBLE, "failure_by_reason") or {}
        fail_text = f"{fail:.0f}" + (" (" + ", ".join(f"{k} {v:.0f}" for k, v in reasons.items()) + ")"
                                      if reasons else "")
        rows.append([
            str(lv["concurrency"]), fmt(get(m, ENSEMBLE, "success"), 0),
            f'<td class="{"bad" if fail else "ok"}">{html.escape(fail_text)}</td>',
            fmt(e.get("generated_token_throughput"), 1), fmt(e.get("tokens_per_step"), 2),
            fmt(e.get("scheduled_mean"), 1), fmt(e.get("scheduled_max"), 0), fmt(e.get("waiting_max"), 0),
            fmt(e.get("kv_used_frac_max"), 1, 100.0, "%"), fmt(e.get("preemptions"), 0),
            *[fmt(get(m, model, "avg_queue_ms"), 2) for model in (ENSEMBLE, PRE, ENGINE, POST)],
        ])
    return table(groups, headers, rows, seps=(1, 3, 10))


def badge(ok: bool) -> str:
    return f'<span class="badge {"ok" if ok else "bad"}">{"met" if ok else "not met"}</span>'


NO_REFERENCE = '<span class="badge info">no reference</span>'


def targets_section(levels_data: list[dict], workload: dict, offline: dict[str, float] | None,
                    step_ms: float | None) -> str:
    if not levels_data:
        return ""
    items = []
    low = min(levels_data, key=lambda lv: lv["concurrency"])
    at = f'at concurrency {low["concurrency"]}'
    ttft = get(low, "client", "ttft_s", "p50")
    itl = get(low, "client", "itl_s", "p50")
    mean_in = get(low, "client", "mean_input_tokens")
    if ttft is not None:
        items.append(f"<li><b>T5, time to first token</b> {at} (prompts of {fmt(mean_in, 0)} tokens on "
                     f"average; the target is stated for 128): p50 {ms(ttft)} ms against 30 ms "
                     f"{badge(ttft * 1000 <= 30.0)}</li>")
    if itl is not None and step_ms:
        ratio = itl * 1000 / step_ms
        items.append(f"<li><b>T5, inter-token latency</b> {at}: p50 {ms(itl, 2)} ms = {ratio:.2f}x the "
                     f"batch-1 step of {step_ms:g} ms (target <= 1.1x) {badge(ratio <= 1.1)}</li>")
    elif itl is not None:
        items.append(f"<li><b>T5, inter-token latency</b> {at}: p50 {ms(itl, 2)} ms; give "
                     f"<code>--batch1-step-ms</code> (the engine's batch-1 step) to compare with 1.1x "
                     f"{NO_REFERENCE}</li>")
    if offline:
        for lv in levels_data:
            ref = offline.get(str(lv["concurrency"]))
            got = (get(lv, "client", "steady_output_token_throughput")
                   or get(lv, "client", "output_token_throughput"))
            if ref and got:
                ratio = got / ref
                items.append(f'<li><b>T3, throughput</b> at concurrency {lv["concurrency"]}: {fmt(got, 0)} '
                             f"tok/s (steady) against the offline engine's {fmt(ref, 0)} tok/s = {ratio:.0%} "
                             f"(target >= 90%) {badge(ratio >= 0.9)}</li>")
    else:
        items.append('<li><b>T3, throughput</b>: give <code>--offline offline.json</code> '
                     '(<code>{"concurrency": output tok/s}</code> of the offline engine on the same prompts) '
                     f"to compare {NO_REFERENCE}</li>")
    return ('<h2>Targets</h2><p class="note">The targets are stated for Qwen-7B shapes on an H100/H200 '
            "(docs: <code>targets.md</code>); on other hardware or models these lines are for "
            f'orientation.</p><ul>{"".join(items)}</ul>')


def meta_list(run: dict, title: str) -> str:
    meta, server = run.get("meta", {}), run.get("server", {})
    wl = meta.get("workload", {})
    wl_text = ", ".join(f"{k}={v}" for k, v in wl.items() if k != "name")
    eng = server.get("engine_config")
    eng_text = (", ".join(f"{k}={v}" for k, v in eng.items()) if isinstance(eng, dict) else (eng or "–"))
    bound = []
    if meta.get("duration_s"):
        bound.append(f"{meta['duration_s']:g} s per level")
    if meta.get("requests"):
        bound.append(f"{meta['requests']} requests per level")
    if meta.get("requests_per_user"):
        bound.append(f"{meta['requests_per_user']} requests per user")
    versions = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())
    rows = [
        ("workload", f"<b>{html.escape(str(wl.get('name', '?')))}</b> ({html.escape(wl_text)})"),
        ("users", html.escape(", ".join(PROTO_NAMES.get(p, p) for p in meta.get("protocols", [])))
         + " &middot; closed loop, no wait between requests"),
        ("levels", html.escape(", ".join(str(x) for x in meta.get("concurrency", [])))
         + (" &middot; " + html.escape(", whichever first; ".join(bound)) if bound else "")
         + f" &middot; {meta.get('warmup', 0)} warm-up requests, seed {meta.get('seed', 0)}"),
        ("extra inputs", html.escape(json.dumps(meta.get("extra_inputs") or {})) or "–"),
        ("server", html.escape(f"Triton {server.get('triton_version', '?')} at "
                               f"{server.get('http_url', '?')}, model {server.get('model', '?')}, "
                               f"engine backend {server.get('engine_backend', '?')}")),
        ("engine config", html.escape(eng_text)),
        ("client host", html.escape(f"{meta.get('host', '?')} ({meta.get('cpus', '?')} CPUs), "
                                    f"{meta.get('platform', '')}")),
        ("versions", html.escape(versions)),
        ("run", html.escape(f"{meta.get('started_at', '?')} -> {meta.get('finished_at', '?')}, "
                            f"commit {meta.get('git_commit') or '?'}")),
    ]
    return '<dl class="meta">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def findings(levels_data: list[dict], run: dict) -> list[str]:
    """A few plain sentences about the run: where throughput saturates, where the engine starts to queue,
    whether the client's and the server's token counts agree, failures and preemptions."""
    out: list[str] = []
    if not levels_data:
        return out
    tput = [(lv["concurrency"], lv["client"]["output_token_throughput"]) for lv in levels_data]
    best_c, best = max(tput, key=lambda x: x[1])
    if len(tput) > 1:
        sat = next((c for (c, v), (_, nxt) in itertools.pairwise(tput) if v > 0 and nxt < v * 1.1), None)
        text = f"Output throughput peaks at <b>{fmt(best, 0)} tok/s</b> with {best_c} users"
        if sat is not None and sat < max(c for c, _ in tput):
            text += (f"; beyond {sat} users it grows by less than 10% per step, so the server is saturated "
                     "there")
        out.append(text + ".")
    low, high = levels_data[0], levels_data[-1]
    t_lo, t_hi = get(low, "client", "ttft_s", "p50"), get(high, "client", "ttft_s", "p50")
    i_lo, i_hi = get(low, "client", "itl_s", "p50"), get(high, "client", "itl_s", "p50")
    if len(levels_data) > 1 and t_lo and t_hi and i_lo and i_hi:
        out.append(f"From {low['concurrency']} to {high['concurrency']} users, TTFT p50 goes from "
                   f"{ms(t_lo)} to {ms(t_hi)} ms ({t_hi / t_lo:.1f}x) and ITL p50 from {ms(i_lo, 2)} to "
                   f"{ms(i_hi, 2)} ms ({i_hi / i_lo:.1f}x).")
    queued = [lv for lv in levels_data if (get(lv, "server", "engine", "waiting_max") or 0) > 0]
    if queued:
        lv = queued[0]
        seqs = get(run, "server", "engine_config", "max_num_seqs")
        tokens = get(run, "server", "engine_config", "max_num_batched_tokens")
        limits = ", ".join(f"{k} {v}" for k, v in (("max_num_seqs", seqs), ("max_num_batched_tokens", tokens))
                           if v)
        out.append(f"From {lv['concurrency']} users on, the engine holds requests back (waiting peak "
                   f"{fmt(get(lv, 'server', 'engine', 'waiting_max'), 0)}, batch peak "
                   f"{fmt(get(lv, 'server', 'engine', 'scheduled_max'), 0)}"
                   + (f"; limits: {limits}" if limits else "")
                   + "): a full batch or a step's token budget for prompts; the wait is part of TTFT.")
    pre = sum(get(lv, "server", "engine", "preemptions") or 0 for lv in levels_data)
    if pre:
        out.append(f"The engine preempted {pre:.0f} sequences for lack of KV-cache blocks.")
    pairs = [(get(lv, "client", "output_tokens"), get(lv, "server", "engine", "generated_tokens"))
             for lv in levels_data]
    pairs = [(a, b) for a, b in pairs if a and b]
    if pairs:
        ca, sb = sum(a for a, _ in pairs), sum(b for _, b in pairs)
        if abs(ca - sb) <= 0.02 * sb:
            out.append(f"Client and server agree on the tokens: {ca:,.0f} counted by the client, {sb:,.0f} "
                       "generated by the engine.")
        else:
            out.append(f"The client counted {ca:,.0f} output tokens, the engine generated {sb:,.0f} "
                       f"({ca / sb:.1%}): other traffic, cancelled requests, or tokens lost in counting.")
    failed = sum(lv["client"]["failed"] for lv in levels_data)
    if failed:
        out.append(f'<span class="badge bad">{failed} requests failed</span> (see Errors).')
    return out


def build_html(run: dict, requests: list[dict], series: list[dict], title: str,
               offline: dict[str, float] | None = None, step_ms: float | None = None,
               plots_dir: Path | None = None) -> str:
    levels_data = sorted(run.get("levels", []), key=lambda lv: lv["concurrency"])
    meta = run.get("meta", {})
    figs: dict[str, bytes | None] = {}
    if levels_data:
        figs["throughput"] = plot_throughput(levels_data)
        figs["latency"] = plot_latency(levels_data)
        figs["distributions"] = plot_distributions(levels_data, requests)
        figs["server"] = plot_server_timeline(levels_data, series)
        figs["queue"] = plot_queue(levels_data)
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        for name, data in figs.items():
            if data is not None:
                (plots_dir / f"{name}.png").write_bytes(data)

    total_ok = sum(lv["client"]["ok"] for lv in levels_data)
    total_failed = sum(lv["client"]["failed"] for lv in levels_data)
    total_cancelled = sum(lv["client"]["cancelled"] for lv in levels_data)
    srv_failed = sum((get(lv, "server", "models", ENSEMBLE, "failure") or 0) for lv in levels_data)
    cards = []
    if levels_data:
        best = max(levels_data, key=lambda lv: lv["client"]["output_token_throughput"])
        low = levels_data[0]
        bc = best["client"]
        cards.append(card("peak output throughput", fmt(bc["output_token_throughput"], 0), "tok/s",
                          f"at {best['concurrency']} users, {fmt(bc['request_throughput'], 2)} req/s"))
        if get(low, "client", "ttft_s", "p50") is not None:
            cards.append(card("time to first token", ms(get(low, "client", "ttft_s", "p50")), "ms",
                              f"p50 at {low['concurrency']} user{'s' if low['concurrency'] > 1 else ''}; "
                              f"p99 {ms(get(low, 'client', 'ttft_s', 'p99'))} ms"))
        if get(low, "client", "itl_s", "p50") is not None:
            cards.append(card("inter-token latency", ms(get(low, "client", "itl_s", "p50"), 2), "ms",
                              f"p50 at {low['concurrency']} user{'s' if low['concurrency'] > 1 else ''}; "
                              f"p99 {ms(get(low, 'client', 'itl_s', 'p99'), 2)} ms"))
        hi = levels_data[-1]
        if len(levels_data) > 1 and get(hi, "client", "ttft_s", "p50") is not None:
            cards.append(card(f"TTFT at {hi['concurrency']} users", ms(get(hi, "client", "ttft_s", "p50")),
                              "ms", f"p50; p99 {ms(get(hi, 'client', 'ttft_s', 'p99'))} ms"))
    cards.append(card("requests", fmt(total_ok, 0), "ok",
                      f"{total_cancelled} cancelled at level ends" if total_cancelled else "over all levels"))
    cards.append(card("failures", str(total_failed), "", f"server counted {srv_failed:.0f}",
                      "bad" if total_failed or srv_failed else "ok"))

    wl = meta.get("workload", {})
    protocols = ", ".join(PROTO_NAMES.get(p, p) for p in meta.get("protocols", []))
    subtitle = (f"{html.escape(str(wl.get('name', '')))} workload &middot; {html.escape(protocols)} &middot; "
                f"concurrency {html.escape(', '.join(str(lv['concurrency']) for lv in levels_data))}")
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<style>{CSS}</style></head><body><main>",
             f"<header><h1>{html.escape(title)}</h1><p class=sub>{subtitle}</p>",
             (f"<p class=sub>{html.escape(str(meta.get('started_at', '')))} &middot; server "
              f"{html.escape(str(get(run, 'server', 'http_url') or ''))} &middot; commit "
              f"{html.escape(str(meta.get('git_commit') or '?'))}</p></header>"),
             f'<div class="cards">{"".join(cards)}</div>']
    found = findings(levels_data, run)
    if found:
        parts.append('<div class="findings"><b>At a glance</b><ul>' + "".join(f"<li>{f}</li>" for f in found)
                     + "</ul></div>")
    if not levels_data:
        parts.append("<p>No level completed: nothing to show.</p>")
    parts.append("<h2>Throughput</h2>")
    parts.append(figure(figs.get("throughput"), "throughput against concurrency", CAPTIONS["throughput"]))
    parts.append("<h2>Latency</h2>")
    parts.append(figure(figs.get("latency"), "latency percentiles against concurrency", CAPTIONS["latency"]))
    parts.append(figure(figs.get("distributions"), "latency distributions", CAPTIONS["distributions"]))
    parts.append("<h3>Client view, per level</h3>")
    parts.append(client_table(levels_data))
    multi = [lv for lv in levels_data if len(lv.get("by_protocol", {})) > 1]
    if multi:
        parts.append("<h3>Per protocol</h3>")
        rows_data = []
        for lv in multi:
            for proto, s in lv["by_protocol"].items():
                rows_data.append({"concurrency": lv["concurrency"], "_label": f"{lv['concurrency']} &middot; "
                                  f"{html.escape(PROTO_NAMES.get(proto, proto))}", "_s": s})
        parts.append(client_table(rows_data, label_fn=lambda d: d["_s"]))
    parts.append("<h2>Server view</h2>")
    parts.append('<p class="note">Scraped from Triton\'s metrics port during the run: the engine\'s gauges '
                 f'(<code>{c.METRIC_REQUESTS}</code>, <code>{c.METRIC_KV_BLOCKS}</code>, '
                 f"<code>{c.METRIC_ENGINE}</code>) and Triton's per-model counters "
                 "(<code>nv_inference_*</code>), compared between the start and the end of each level.</p>")
    parts.append(figure(figs.get("server"), "server time series",
                        "The whole run; grey spans are the levels. Running: sequences in the engine's batch "
                        "(<code>scheduled</code>); waiting: requests the engine has queued (their sum is "
                        "<code>active</code>). KV cache: blocks in use. Tokens / s from the engine's "
                        "generated_tokens counter between scrapes."))
    queue_fig = figure(figs.get("queue"), "Triton queue time per model",
                       "Triton's mean queue time per request of each model over each level.")
    parts.append(f'<div class="row">{queue_fig}<div class="card notes">'
                 "<b>Reading the server view</b><ul><li>The engine batches inflight and keeps its own "
                 "queue: requests held back by a full batch show as <i>waiting</i> in the engine's gauge, "
                 "not in Triton's queue time.</li>"
                 "<li>Triton's queue time of pre- and postprocessing grows when their instances are "
                 "busy: every streamed token passes through postprocessing once.</li>"
                 "<li><i>Tokens / step</i> is the engine's mean batch while it generated; <i>KV peak</i> the "
                 "largest share of KV-cache blocks in use; <i>preempt.</i> sequences evicted for lack of "
                 "blocks.</li></ul></div></div>")
    parts.append(server_table(levels_data))
    parts.append(targets_section(levels_data, wl, offline, step_ms))
    errors = [(lv["concurrency"], e) for lv in levels_data for e in lv.get("error_samples", [])]
    parts.append("<h2>Errors</h2>")
    if errors:
        kinds: dict[str, int] = {}
        for lv in levels_data:
            for k, n in lv["client"].get("errors", {}).items():
                kinds[k] = kinds.get(k, 0) + n
        parts.append("<p>" + ", ".join(f'<span class="badge bad">{html.escape(k)}: {n}</span>'
                                       for k, n in sorted(kinds.items())) + "</p>")
        parts.append('<ul class="errors">' + "".join(f"<li>c={lv}: {html.escape(e)}</li>" for lv, e in errors)
                     + "</ul>")
    else:
        cut = f" ({total_cancelled} cut off at the end of a level)" if total_cancelled else ""
        parts.append(f'<p><span class="badge ok">none</span> every request of {total_ok} succeeded{cut}.</p>')
    mism = sum(lv["client"].get("length_mismatches", 0) for lv in levels_data)
    if mism:
        parts.append(f'<p class="note"><span class="badge bad">{mism}</span> replies of forced length had a '
                     f"different token count than asked for: check the token counting "
                     f"({c.OUTPUT_LOG_PROBS}).</p>")
    parts.append("<h2>Run</h2>")
    parts.append(meta_list(run, title))
    parts.append('<p class="note">Output tokens are the engine\'s count: the length of '
                 f'<code>{c.OUTPUT_LOG_PROBS}</code> in every response, not characters of text. Files: '
                 '<code>run.json</code>, <code>summary.csv</code>, '
                 '<code>requests.csv</code>, <code>server_timeseries.csv</code>, <code>plots/</code>.</p>')
    parts.append("<footer>qwen-triton load test report &middot; tools/loadtest_report.py</footer>"
                 "</main></body></html>")
    return "\n".join(p for p in parts if p)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="HTML report of a qwen-triton load test run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default RUN_DIR/report.html")
    p.add_argument("--title", default=None)
    p.add_argument("--offline", type=Path, default=None,
                   help='JSON {"<concurrency>": output tok/s} of the offline engine (target T3)')
    p.add_argument("--batch1-step-ms", type=float, default=None, help="the engine's batch-1 step (target T5)")
    p.add_argument("--no-plots-dir", action="store_true", help="do not also write plots/*.png")
    args = p.parse_args(argv)
    run_path = args.run_dir / "run.json"
    if not run_path.exists():
        print(f"[loadtest-report] no run.json in {args.run_dir}", file=sys.stderr)
        return 1
    run = json.loads(run_path.read_text(encoding="utf-8"))
    offline = None
    if args.offline:
        offline = {str(k): float(v) for k, v in json.loads(args.offline.read_text()).items()}
    title = args.title or get(run, "meta", "label") or "qwen-triton load test"
    page = build_html(run, read_csv(args.run_dir / "requests.csv"),
                      read_csv(args.run_dir / "server_timeseries.csv"), title, offline, args.batch1_step_ms,
                      None if args.no_plots_dir else args.run_dir / "plots")
    out = args.out or args.run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    print(f"[loadtest-report] wrote {out} ({len(page) / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

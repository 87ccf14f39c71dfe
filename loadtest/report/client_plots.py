"""The client's figures: throughput, latency percentiles and latency distributions against concurrency.

Each ``plot_*`` takes the run's levels (sorted by concurrency) and gives PNG bytes, or None when the run
has nothing to show in it.  Call them inside :func:`loadtest.report.charts.styled`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter

from .charts import (
    C_CLIENT,
    C_ITL,
    C_REQ,
    C_SERVER,
    C_TTFT,
    MUTED,
    P_COLORS,
    annotate_points,
    level_axis,
    ms_axis,
    nice_log_ticks,
    plot_line,
    png,
    series,
    tick_label,
)
from .rundir import get

QUANTILES = ("p50", "p90", "p99")
# A level's point on the latency-throughput curve: (output tok/s, ITL p50 s, TTFT p50 s or None, users).
_TradeoffPoint = tuple[float, float, float | None, int]


def _row(n: int, wspace: float) -> tuple[Figure, Sequence[Axes]]:
    """A figure of ``n`` plots side by side."""
    fig = Figure(figsize=(11, 3.8))
    return fig, list(fig.subplots(1, n, gridspec_kw={"wspace": wspace}, squeeze=False)[0])


def plot_throughput(levels_data: list[dict]) -> bytes:
    """Output tokens/s and requests/s against concurrency, and (with two levels or more) latency against
    throughput."""
    pts = [(get(lv, "client", "output_token_throughput"), get(lv, "client", "itl_s", "p50"),
            get(lv, "client", "ttft_s", "p50"), lv["concurrency"]) for lv in levels_data]
    pts = [p for p in pts if p[0] and p[1] is not None]
    fig, axes = _row(3 if len(pts) >= 2 else 2, 0.3)
    _output_tokens(axes[0], levels_data)
    _rate_axis(axes[1], levels_data, "Requests / s", "request_throughput", "client: requests / s", C_REQ,
               lambda v: f"{v:.2f}")
    if len(pts) >= 2:
        _tradeoff(axes[2], pts)
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1.06), ncol=len(handles))
    return png(fig)


def _output_tokens(ax: Axes, levels_data: list[dict]) -> None:
    """The client's output tokens/s (dotted: its steady rate), the engine's own count dashed."""
    levels = [lv["concurrency"] for lv in levels_data]
    client = _rate_axis(ax, levels_data, "Output tokens / s", "output_token_throughput",
                        "client: output tokens / s", C_CLIENT, lambda v: f"{v:,.0f}", zorder=3)
    server = series(levels_data, "server", "engine", "generated_token_throughput")
    steady = series(levels_data, "client", "steady_output_token_throughput")
    if any(v is not None for v in steady):
        plot_line(ax, levels, steady, color=C_CLIENT, linestyle=":", marker="^", markersize=4, linewidth=1.4,
                  alpha=0.8, label="client, before the drain")
    if any(v is not None for v in server):
        plot_line(ax, levels, server, color=C_SERVER, linestyle="--", marker="s", markersize=4,
                  linewidth=1.5, label="server: tokens the engine generated / s")
    ax.set_ylim(bottom=0, top=max([v for v in client + server + steady if v] or [1]) * 1.2)


def _rate_axis(ax: Axes, levels_data: list[dict], title: str, key: str, label: str, color: str,
               fmt: Callable[[float], str], **kw: object) -> list[float | None]:
    """One client rate against concurrency, each point labelled; its values."""
    levels = [lv["concurrency"] for lv in levels_data]
    values = series(levels_data, "client", key)
    plot_line(ax, levels, values, color=color, label=label, **kw)
    annotate_points(ax, levels, values, fmt, color)
    ax.set_title(title, pad=10)
    ax.set_ylim(bottom=0, top=max([v for v in values if v] or [1]) * 1.2)
    level_axis(ax, levels)
    return values


def _tradeoff(ax: Axes, pts: list[_TradeoffPoint]) -> None:
    """ITL (and TTFT) p50 against output tokens/s, each point labelled with its users."""
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


def plot_latency(levels_data: list[dict]) -> bytes:
    """TTFT, ITL and latency percentiles against concurrency (shaded: p50 to p99)."""
    levels = [lv["concurrency"] for lv in levels_data]
    metrics = [("ttft_s", "Time to first token"), ("itl_s", "Inter-token latency"),
               ("latency_s", "Request latency (end to end)")]
    metrics = [m for m in metrics if any(get(lv, "client", m[0], "p50") is not None for lv in levels_data)]
    fig, axes = _row(len(metrics), 0.28)
    for ax, (key, title) in zip(axes, metrics):
        allv = []
        p50 = series(levels_data, "client", key, "p50", scale=1000)
        p99 = series(levels_data, "client", key, "p99", scale=1000)
        band = [(x, lo, hi) for x, lo, hi in zip(levels, p50, p99) if lo is not None and hi is not None]
        if band:
            ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                            color=P_COLORS["p50"], alpha=0.07, linewidth=0)
        for q in QUANTILES:
            ys = series(levels_data, "client", key, q, scale=1000)
            allv += [y for y in ys if y is not None]
            plot_line(ax, levels, ys, color=P_COLORS[q], label=q)
        ax.set_title(title, pad=10)
        level_axis(ax, levels)
        ms_axis(ax, allv)
    handles = [Line2D([], [], color=P_COLORS[q], marker="o", label=q) for q in QUANTILES]
    handles.append(Patch(color=P_COLORS["p50"], alpha=0.1, label="p50 to p99"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.06), ncol=4)
    return png(fig)


def plot_distributions(levels_data: list[dict], requests: list[dict]) -> bytes | None:
    """Each successful request's TTFT, ITL and latency per level (violins, p50/p90/p99 marked)."""
    levels = [lv["concurrency"] for lv in levels_data]
    ok = [r for r in requests if r.get("ok")]
    keys = [(k, t) for k, t in (("ttft_s", "Time to first token"), ("itl_s", "Inter-token latency"),
                                ("latency_s", "Request latency"))
            if any(r.get(k) is not None for r in ok)]
    if not keys:
        return None
    fig, axes = _row(len(keys), 0.28)
    for ax, (key, title) in zip(axes, keys):
        per_level = [[r[key] * 1000 for r in ok if r.get("level") == level and r.get(key) is not None]
                     for level in levels]
        if any(per_level):
            _violins(ax, levels, per_level)
        ax.set_title(title, pad=10)
    handles = [Line2D([], [], color=P_COLORS[q], linewidth=2, label=q) for q in QUANTILES]
    handles.append(Patch(color=C_CLIENT, alpha=0.28, label="distribution of requests"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.06), ncol=4)
    return png(fig)


def _violins(ax: Axes, levels: list[int], per_level: list[list[float]]) -> None:
    """One violin per level with values (ms; ``per_level`` in the order of ``levels``), on a log scale when
    they span more than 30x."""
    data = [d for d in per_level if d]
    pos = [i for i, d in enumerate(per_level) if d]
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
    ax.set_xlim(-0.6, len(per_level) - 0.4)
    ax.set_xlabel("concurrent users")
    ax.grid(axis="x", visible=False)
    if use_log:
        lo, hi = min(flat) / 1.3, max(flat) * 1.3
        ax.set_ylim(math.log10(lo), math.log10(hi))
        ticks = nice_log_ticks(lo, hi)
        ax.yaxis.set_major_locator(FixedLocator([math.log10(t) for t in ticks]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: tick_label(round(10 ** y, 6))))
        ax.set_ylabel("ms (log scale)")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("ms")

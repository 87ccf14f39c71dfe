"""The look of every figure (palette, matplotlib style) and the axis helpers the plots share.

Figures are ``matplotlib.figure.Figure`` objects made without pyplot (no backend to choose, no global
figure registry); :func:`styled` applies the style to whatever is drawn inside it.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterator, Sequence
from types import MappingProxyType
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from .rundir import get

# A calm palette: one hue per percentile.
INK = "#1f2933"
MUTED = "#7b8794"
GRID = "#e4e7eb"
P_COLORS = MappingProxyType({"p50": "#2563eb", "p90": "#f59e0b", "p99": "#dc2626"})
C_CLIENT, C_SERVER, C_REQ = "#2563eb", "#10b981", "#8b5cf6"
C_ITL, C_TTFT = "#334155", "#f59e0b"
DPI = 110
STYLE = MappingProxyType({
    "font.family": "DejaVu Sans", "font.size": 10, "axes.edgecolor": "#cbd2d9", "axes.labelcolor": INK,
    "axes.titlesize": 11.5, "axes.titleweight": "bold", "axes.titlecolor": INK, "axes.titlelocation": "left",
    "axes.titlepad": 10, "axes.grid": True, "grid.color": GRID, "grid.linewidth": 0.8, "axes.axisbelow": True,
    "axes.spines.top": False, "axes.spines.right": False, "xtick.color": MUTED, "ytick.color": MUTED,
    "xtick.labelcolor": INK, "ytick.labelcolor": INK, "legend.frameon": False, "legend.fontsize": 9,
    "figure.facecolor": "white", "savefig.facecolor": "white", "lines.linewidth": 2.0, "lines.markersize": 6,
})


@contextlib.contextmanager
def styled() -> Iterator[None]:
    """The report's style for the figures made and saved inside (matplotlib's rcParams, restored after)."""
    with matplotlib.rc_context(dict(STYLE)):
        yield


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return buf.getvalue()
def level_axis(ax: Axes, levels: Sequence[int]) -> None:
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


def tick_label(v: float) -> str:
    """A tick value written short: 1500 -> 1.5k."""
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
    axis.set_major_formatter(FuncFormatter(lambda y, _: tick_label(y)))
    axis.set_minor_locator(NullLocator())


def ms_axis(ax: Axes, values: Sequence[float]) -> None:
    """y axis in ms; log scale when the values span more than 30x."""
    vals = [v for v in values if v is not None and v > 0]
    if vals and max(vals) / min(vals) > 30:
        log_axis(ax.yaxis, vals)
        ax.set_ylabel("ms (log scale)")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("ms")


def title_legend(ax: Axes, handles: list | None = None, ncol: int = 3) -> None:
    """The legend on the title's line, right-aligned, so it never covers data."""
    kw = {"handles": handles} if handles else {}
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=ncol, borderaxespad=0.2,
              handlelength=1.6, columnspacing=1.2, **kw)


def series(levels_data: list[dict], *path: str, scale: float = 1.0) -> list[float | None]:
    """One value per level (at ``path`` in each level's dict, times ``scale``), None where missing."""
    out = []
    for lv in levels_data:
        v = get(lv, *path)
        out.append(None if v is None else v * scale)
    return out


def plot_line(ax: Axes, xs: Sequence[float], ys: Sequence[float | None], **kw: Any) -> None:
    """A line through the points whose y is known (markers on by default)."""
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if pts:
        kw.setdefault("marker", "o")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], **kw)


def annotate_points(ax: Axes, xs: Sequence[float], ys: Sequence[float | None], fmt_fn: Callable[[float], str],
                    color: str) -> None:
    """Each known point's value written just above it."""
    for x, y in zip(xs, ys):
        if y is not None:
            ax.annotate(fmt_fn(y), (x, y), textcoords="offset points", xytext=(0, 8), ha="center",
                        fontsize=8.5, color=color)

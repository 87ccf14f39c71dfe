"""Triton's metrics port (Prometheus text), read during a load test: the server's view beside the client's.

A :class:`Snapshot` is one scrape.  Counters (``nv_inference_*``, our engine's ``qwen_triton_engine``
counters and its prefix-cache counters) are compared between the start and the end of a level
(:func:`level_server_summary`); gauges (requests active / scheduled / waiting, KV-cache blocks, cached
prefix blocks, GPU use) are sampled every half second or so into a time series (:func:`timeseries_row`).

The prefix cache's hit rate over a level is (hits at its end - hits at its start) / (queries at its end -
queries at its start), both counted in prompt tokens (``qwen_triton_prefix_cache_{hits,queries}_total``):
the share of the prompt tokens admitted during the level whose KV came from the cache.

Triton's own metric names are Triton's (they are not part of our contract); the engine's families come
from ``qwen_triton.serving.contract``; any label set is read (the engine's families carry ``model`` and
``version`` as tensorrtllm_backend's do).  Plain Python: scraping and parsing are ``qwen_triton.wire``'s
(urllib, which gevent makes cooperative once the standard library is patched).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qwen_triton import wire
from qwen_triton.serving import contract as c

# Triton 2.51's families (``nv_inference_first_response_histogram_ms`` does not exist in this build).
SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"
COUNT = "nv_inference_count"
EXEC_COUNT = "nv_inference_exec_count"
REQUEST_US = "nv_inference_request_duration_us"
QUEUE_US = "nv_inference_queue_duration_us"
COMPUTE_INFER_US = "nv_inference_compute_infer_duration_us"
PENDING = "nv_inference_pending_request_count"
QUEUE_SUMMARY_US = "nv_inference_queue_summary_us"
REQUEST_SUMMARY_US = "nv_inference_request_summary_us"
GPU_UTIL = "nv_gpu_utilization"
GPU_MEM_USED = "nv_gpu_memory_used_bytes"
GPU_MEM_TOTAL = "nv_gpu_memory_total_bytes"
GPU_POWER = "nv_gpu_power_usage"
CPU_UTIL = "nv_cpu_utilization"


@dataclass
class Snapshot:
    """One scrape; ``t`` is seconds since the run's start, ``values`` the families as
    ``qwen_triton.wire.parse_metrics`` gives them, ``ok`` False if the port did not answer."""

    t: float
    values: dict[str, dict[wire.Labels, float]] = field(default_factory=dict)
    ok: bool = True

    def get(self, name: str, /, **labels: str) -> float | None:
        """The value of the one series with exactly these labels (None if absent)."""
        return self.values.get(name, {}).get(tuple(sorted(labels.items())))

    def select(self, name: str, /, **match: str) -> list[tuple[dict[str, str], float]]:
        """Every series of a family whose labels include ``match``."""
        return wire.metric_series(self.values, name, **match)

    def total(self, name: str, /, **match: str) -> float | None:
        series = self.select(name, **match)
        return sum(v for _, v in series) if series else None

    def by_label(self, name: str, label: str, /, **match: str) -> dict[str, float]:
        return wire.metric_values(self.values, name, label, **match)

    def models(self) -> list[str]:
        return sorted({dict(labels).get("model", "") for labels in self.values.get(SUCCESS, {})} - {""})


def fetch(url: str, t: float, timeout: float = 5.0) -> Snapshot:
    """Scrape once; a failure gives an empty snapshot with ok=False rather than an exception."""
    families = wire.fetch_metrics(url, timeout)
    return Snapshot(t, {}, ok=False) if families is None else Snapshot(t, families)


# Columns of the gauge time series (server_timeseries.csv), in order.
TIMESERIES_FIELDS = (
    "t_s", "level", "active", "scheduled", "waiting", "kv_used", "kv_free", "kv_max", "steps",
    "generated_tokens", "preemptions", "max_batch_seen", "pending_ensemble", "pending_engine",
    "gpu_util", "gpu_mem_used_gb", "cpu_util", "prefix_blocks", "prefix_queries", "prefix_hits",
)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def timeseries_row(snap: Snapshot, level: int | None) -> dict[str, Any]:
    """One row of the gauge time series from a snapshot."""
    req = snap.by_label(c.METRIC_REQUESTS, "request_type")
    kv = snap.by_label(c.METRIC_KV_BLOCKS, "kv_cache_block_type")
    eng = snap.by_label(c.METRIC_ENGINE, "counter")
    gpu = [v for _, v in snap.select(GPU_UTIL)]
    mem = [v for _, v in snap.select(GPU_MEM_USED)]
    return {
        "t_s": round(snap.t, 3), "level": level,
        "active": req.get("active"), "scheduled": req.get("scheduled"), "waiting": req.get("waiting"),
        "kv_used": kv.get("used"), "kv_free": kv.get("free"), "kv_max": kv.get("max"),
        "steps": eng.get("steps"), "generated_tokens": eng.get("generated_tokens"),
        "preemptions": eng.get("preemptions"), "max_batch_seen": eng.get("max_batch_seen"),
        "pending_ensemble": snap.total(PENDING, model=c.ENSEMBLE),
        "pending_engine": snap.total(PENDING, model=c.ENGINE),
        "gpu_util": _mean(gpu), "gpu_mem_used_gb": sum(mem) / 1e9 if mem else None,
        "cpu_util": snap.total(CPU_UTIL),
        # the prefix cache: free blocks still holding a prefix (gauge), prompt tokens looked up and found
        "prefix_blocks": snap.total(c.METRIC_PREFIX_BLOCKS),
        "prefix_queries": snap.total(c.METRIC_PREFIX_QUERIES), "prefix_hits": snap.total(c.METRIC_PREFIX_HITS),
    }


def _delta(before: Snapshot, after: Snapshot, name: str, **match: str) -> float | None:
    a, b = after.total(name, **match), before.total(name, **match)
    if a is None:
        return None
    return a - (b or 0.0)


def _counter_delta(before: Snapshot, after: Snapshot, name: str) -> float | None:
    """A counter's growth over a level (None where the server does not export it); a counter that went
    back (the engine model restarted) counts from zero, as Prometheus' increase() does."""
    a, b = after.total(name), before.total(name)
    if a is None:
        return None
    return a if b is None or a < b else a - b


def _per(num: float | None, den: float | None, scale: float = 1.0) -> float | None:
    if num is None or not den:
        return None
    return num / den * scale


def _gauge_stats(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[float | None, float | None]:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return (_mean(values), max(values) if values else None)


def level_server_summary(before: Snapshot, after: Snapshot, rows: Sequence[Mapping[str, Any]],
                         duration_s: float) -> dict[str, Any]:
    """What the server saw during one level: counter deltas per model (successes, failures by reason,
    mean queue / request / compute time), the engine's counters and its gauges' mean and peak."""
    if not (before.ok and after.ok):
        return {"available": False}
    _, gpu_mem_max = _gauge_stats(rows, "gpu_mem_used_gb")
    gpu_mean, gpu_max = _gauge_stats(rows, "gpu_util")
    return {
        "available": True,
        "models": {model: _model_summary(before, after, model) for model in after.models()},
        "engine": _engine_summary(before, after, rows, duration_s),
        "gpu": {"util_mean": gpu_mean, "util_max": gpu_max, "mem_used_gb_max": gpu_mem_max},
        "samples": len(rows),
    }


def _model_summary(before: Snapshot, after: Snapshot, model: str) -> dict[str, Any]:
    """One model's Triton counters over a level: successes, failures (by reason), mean times."""
    success = _delta(before, after, SUCCESS, model=model)
    failure = _delta(before, after, FAILURE, model=model)
    reasons = {}
    for labels, v in after.select(FAILURE, model=model):
        prev = before.get(FAILURE, **labels) or 0.0
        if v - prev:
            reasons[labels.get("reason", "?")] = v - prev
    done = (success or 0.0) + (failure or 0.0)
    summary = after.by_label(QUEUE_SUMMARY_US, "quantile", model=model)
    quantiles = {k: v / 1000.0 for k, v in summary.items()}
    return {
        "success": success, "failure": failure, "failure_by_reason": reasons,
        "count": _delta(before, after, COUNT, model=model),
        "exec_count": _delta(before, after, EXEC_COUNT, model=model),
        "avg_queue_ms": _per(_delta(before, after, QUEUE_US, model=model), done, 1e-3),
        "avg_request_ms": _per(_delta(before, after, REQUEST_US, model=model), done, 1e-3),
        "avg_compute_infer_ms": _per(_delta(before, after, COMPUTE_INFER_US, model=model), done, 1e-3),
        # Triton's summaries cover a sliding window, so these are "lately", not exactly this level
        "queue_p50_ms": quantiles.get("0.5"), "queue_p99_ms": quantiles.get("0.99"),
    }


def _engine_summary(before: Snapshot, after: Snapshot, rows: Sequence[Mapping[str, Any]],
                    duration_s: float) -> dict[str, Any]:
    """The engine's counters over a level (steps, tokens, preemptions), its gauges' mean and peak, and the
    prefix cache's hit rate and cached blocks (:func:`prefix_cache_summary`)."""
    eng_before = before.by_label(c.METRIC_ENGINE, "counter")
    eng_after = after.by_label(c.METRIC_ENGINE, "counter")

    def eng(key: str) -> float | None:
        if key not in eng_after:
            return None
        return eng_after[key] - eng_before.get(key, 0.0)

    steps, generated = eng("steps"), eng("generated_tokens")
    active_mean, active_max = _gauge_stats(rows, "active")
    waiting_mean, waiting_max = _gauge_stats(rows, "waiting")
    sched_mean, sched_max = _gauge_stats(rows, "scheduled")
    kv_used_mean, kv_used_max = _gauge_stats(rows, "kv_used")
    _, kv_max = _gauge_stats(rows, "kv_max")
    return {
        "steps": steps, "generated_tokens": generated, "preemptions": eng("preemptions"),
        "max_batch_seen": eng_after.get("max_batch_seen"),
        "tokens_per_step": _per(generated, steps),
        "generated_token_throughput": _per(generated, duration_s),
        "step_ms": _per(duration_s * 1000.0, steps),  # wall time per step, idle time included
        "active_mean": active_mean, "active_max": active_max,
        "scheduled_mean": sched_mean, "scheduled_max": sched_max,
        "waiting_mean": waiting_mean, "waiting_max": waiting_max,
        "kv_used_mean": kv_used_mean, "kv_used_max": kv_used_max, "kv_blocks": kv_max,
        "kv_used_frac_max": _per(kv_used_max, kv_max),
        **prefix_cache_summary(before, after, rows),
    }


def prefix_cache_summary(before: Snapshot, after: Snapshot, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The prefix cache over a level: prompt tokens looked up (``prefix_queries``) and found
    (``prefix_hits``), their ratio (``prefix_hit_rate``, None when nothing was looked up or the server does
    not export the counters), and the cached-block gauge at the level's end and at its peak."""
    queries = _counter_delta(before, after, c.METRIC_PREFIX_QUERIES)
    hits = _counter_delta(before, after, c.METRIC_PREFIX_HITS)
    blocks = after.total(c.METRIC_PREFIX_BLOCKS)
    sampled = [float(r["prefix_blocks"]) for r in rows if r.get("prefix_blocks") is not None]
    sampled += [] if blocks is None else [blocks]
    return {"prefix_queries": queries, "prefix_hits": hits, "prefix_hit_rate": _per(hits, queries),
            "prefix_blocks": blocks, "prefix_blocks_max": max(sampled, default=None)}


def flat_server(summary: Mapping[str, Any], prefix: str = "srv_") -> dict[str, Any]:
    """The CSV columns of a level's server summary: the ensemble's and the engine model's counts and
    queue times, and the engine's gauges."""
    if not summary.get("available"):
        return {}
    row: dict[str, Any] = {}
    for model, short in ((c.ENSEMBLE, "ensemble"), (c.ENGINE, "engine"), (c.PREPROCESSING, "pre"),
                         (c.POSTPROCESSING, "post")):
        m = summary["models"].get(model)
        if not m:
            continue
        for key in ("success", "failure", "avg_queue_ms", "avg_request_ms"):
            v = m.get(key)
            row[f"{prefix}{short}_{key}"] = round(v, 3) if isinstance(v, float) else v
    for key, v in summary["engine"].items():
        row[f"{prefix}{key}"] = round(v, 4) if isinstance(v, float) else v
    for key, v in summary.get("gpu", {}).items():
        if v is not None:
            row[f"{prefix}gpu_{key}"] = round(v, 3)
    return row

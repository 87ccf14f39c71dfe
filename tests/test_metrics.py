"""The engine model's metrics (qwen_triton/serving/engine_metrics.py): the values it computes, the
latency recorder, the exporter's Prometheus types, and, end to end, Triton's /metrics of the session's
served random-weight model (conftest.random_served) after real requests.

The autoscaler's metrics (deploy/prometheus-adapter/rules.yaml) are checked against the same live scrape:
every series a rule selects must be there, so a renamed gauge breaks this test, not the cluster.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from served import grpc_stream, needs_triton

from qwen_triton import wire
from qwen_triton.outputs import EngineStats, RequestOutput
from qwen_triton.serving import contract as c
from qwen_triton.serving.engine_metrics import (
    FAMILIES,
    ITL_BUCKETS,
    TTFT_BUCKETS,
    LatencyRecorder,
    MetricsExporter,
    counter_totals,
    gauge_values,
)

ROOT = Path(__file__).resolve().parents[1]
ADAPTER_RULES = ROOT / "deploy" / "prometheus-adapter" / "rules.yaml"


def _stats(**kw) -> EngineStats:
    base = dict(num_running=3, num_waiting=2, num_free_blocks=30, num_total_blocks=40, num_steps=7,
                num_preemptions=1, max_running_seen=4, num_generated_tokens=99)
    return EngineStats(**{**base, **kw})


def test_gauges_and_counters_follow_the_engine_stats():
    stats = _stats(prefix_cache_queries=640, prefix_cache_hits=320, num_cached_blocks=5)
    g = gauge_values(stats, block_size=32, max_num_seqs=8, rejected=2)
    assert g[(c.METRIC_REQUESTS, "request_type", "waiting")] == 2
    assert g[(c.METRIC_REQUESTS, "request_type", "scheduled")] == 3
    assert g[(c.METRIC_REQUESTS, "request_type", "active")] == 5
    assert g[(c.METRIC_KV_BLOCKS, "kv_cache_block_type", "used")] == 10
    assert g[(c.METRIC_KV_BLOCKS, "kv_cache_block_type", "fraction")] == 0.25
    assert g[(c.METRIC_KV_BLOCKS, "kv_cache_block_type", "reused")] == 10  # 320 tokens / 32 per block
    assert g[(c.METRIC_PREFIX_BLOCKS, "", "")] == 5
    assert g[(c.METRIC_ENGINE, "counter", "rejected")] == 2
    assert counter_totals(stats) == {c.METRIC_GENERATION_TOKENS: 99, c.METRIC_PREFIX_QUERIES: 640,
                                     c.METRIC_PREFIX_HITS: 320}


def _out(rid: str, tokens: list[int], finished: bool = False) -> RequestOutput:
    return RequestOutput(rid, tokens, None, finished, "stop" if finished else None, 4, 0)


def test_latency_recorder_times_first_token_and_mean_gap():
    now = [100.0]
    rec = LatencyRecorder(clock=lambda: now[0])
    rec.start("a")
    rec.start("b")
    now[0] = 100.5
    rec.observe("a", _out("a", [1]))  # first token of a: 0.5 s
    now[0] = 101.0
    rec.observe("a", _out("a", [2, 3]))  # two more tokens in one step
    rec.observe("b", _out("b", [], finished=True))  # b aborted before any token: nothing observed
    now[0] = 102.0
    rec.observe("a", _out("a", [4], finished=True))
    ttft, itl = rec.drain()
    assert ttft == [0.5]
    assert itl == [pytest.approx((102.0 - 100.5) / 3)]  # 4 tokens, 3 gaps
    assert rec.drain() == ([], []) and rec.live_count() == 0
    rec.start("c")
    rec.observe("c", _out("c", [9], finished=True))  # one token: a first-token time, no gap
    assert rec.drain() == ([0.0], [])


class _FakeMetric:
    def __init__(self, labels, buckets):
        self.labels, self.buckets, self.calls = labels, buckets, []

    def set(self, v):
        self.calls.append(("set", v))

    def increment(self, v):
        self.calls.append(("increment", v))

    def observe(self, v):
        self.calls.append(("observe", v))


class _FakeFamily:
    GAUGE, COUNTER, HISTOGRAM = "gauge", "counter", "histogram"

    def __init__(self, name, description, kind):
        self.name, self.kind, self.metrics = name, kind, []

    def Metric(self, labels, buckets=None):  # noqa: N802 - pb_utils' spelling
        m = _FakeMetric(labels, buckets)
        self.metrics.append(m)
        return m


class _FakePbUtils:
    """Triton's Python-backend metrics API as the exporter calls it (python_backend r24.10 pb_stub.cc)."""

    def __init__(self):
        self.families = {}

        def family(name, description, kind):
            self.families[name] = _FakeFamily(name, description, kind)
            return self.families[name]

        self.MetricFamily = family
        for k in ("GAUGE", "COUNTER", "HISTOGRAM"):
            setattr(self.MetricFamily, k, k.lower())


def test_exporter_raises_counters_by_growth_and_observes_histograms():
    pb = _FakePbUtils()
    exporter = MetricsExporter(pb, {"model": "tensorrt_llm", "version": "1"})
    assert {n: f.kind for n, f in pb.families.items()} == {s.name: s.kind.lower() for s in FAMILIES}
    ttft_family = pb.families[c.METRIC_TTFT]
    assert ttft_family.metrics[0].buckets == list(TTFT_BUCKETS)
    assert pb.families[c.METRIC_ITL].metrics[0].buckets == list(ITL_BUCKETS)
    stats = _stats(num_generated_tokens=10)
    exporter.export(gauge_values(stats, 32, 8), counter_totals(stats), ([0.2, 0.3], [0.05]))
    stats = _stats(num_generated_tokens=25)
    exporter.export(gauge_values(stats, 32, 8), counter_totals(stats), ([], []))
    tokens = pb.families[c.METRIC_GENERATION_TOKENS].metrics[0]
    assert tokens.calls == [("increment", 10.0), ("increment", 15.0)]
    assert tokens.labels == {"model": "tensorrt_llm", "version": "1"}
    hits = pb.families[c.METRIC_PREFIX_HITS].metrics[0]
    assert hits.calls == [("increment", 0.0)]  # created at once (the series exists), never raised by 0 again
    assert ttft_family.metrics[0].calls == [("observe", 0.2), ("observe", 0.3)]
    waiting = [m for m in pb.families[c.METRIC_REQUESTS].metrics if m.labels.get("request_type") == "waiting"]
    assert waiting[0].calls == [("set", 2.0), ("set", 2.0)]


# -- end to end: Triton's /metrics --------------------------------------------------------------------------

def _types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def _scrape(server) -> tuple[str, dict]:
    status, body = wire.http_get(server.metrics_url, timeout=5)
    assert status == 200, server.metrics_url
    text = body.decode()
    return text, wire.parse_metrics(text)


def _one(families, name: str, **match) -> float:
    series = wire.metric_series(families, name, model=c.ENGINE, **match)
    assert len(series) == 1, (name, match, series)
    return series[0][1]


def _stream(server, text: str, tokens: int) -> list[str]:
    inputs = {c.TEXT_INPUT: np.array([[text.encode()]], dtype=object),
              c.MAX_TOKENS: np.array([[tokens]], np.int32), c.MIN_LENGTH: np.array([[tokens]], np.int32),
              c.STREAM: np.array([[True]]), c.TEMPERATURE: np.array([[0.0]], np.float32)}
    return grpc_stream(server, inputs=inputs)


def _settled(server) -> tuple[str, dict]:
    """A scrape once the engine model's 100 ms export has caught up with the engine."""
    for _ in range(50):
        time.sleep(0.2)
        text, fam = _scrape(server)
        if _one(fam, c.METRIC_GENERATION_TOKENS) == _one(fam, c.METRIC_ENGINE, counter="generated_tokens"):
            return text, fam
    raise AssertionError("the token counter never caught up with the engine's gauge")


@pytest.mark.server
@needs_triton
def test_served_metrics_after_real_requests(random_served):
    server = random_served.server
    _, before = _settled(server)
    n, tokens = 3, 6
    for i in range(n):
        assert len(_stream(server, f"metrics probe {i}", tokens)) >= 1
    text, after = _settled(server)
    types = _types(text)
    for spec in FAMILIES:
        assert types.get(spec.name) == spec.kind.lower(), (spec.name, types.get(spec.name))
    for name in (c.METRIC_TTFT, c.METRIC_ITL):
        count = _one(after, name + "_count") - _one(before, name + "_count")
        assert count >= n, (name, count)  # one observation per request (others may have run too)
        assert _one(after, name + "_sum") > _one(before, name + "_sum")
        buckets = sorted((float(dict(lab)["le"]), v) for lab, v in after[name + "_bucket"].items())
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        assert buckets[-1] == (float("inf"), _one(after, name + "_count"))
    grown = _one(after, c.METRIC_GENERATION_TOKENS) - _one(before, c.METRIC_GENERATION_TOKENS)
    assert grown >= n * tokens
    assert 0 <= _one(after, c.METRIC_PREFIX_HITS) <= _one(after, c.METRIC_PREFIX_QUERIES)
    assert _one(after, c.METRIC_REQUESTS, request_type="waiting") >= 0
    kv = wire.metric_values(after, c.METRIC_KV_BLOCKS, model=c.ENGINE)
    assert kv["used"] + kv["free"] == kv["max"] > 0
    _adapter_series_exist(after)


def _adapter_series_exist(families) -> None:
    """Each prometheus-adapter rule's seriesQuery selects series that this server exports."""
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
    assert rules
    for rule in rules:
        name, _, matchers = rule["seriesQuery"].partition("{")
        wanted = dict(re.findall(r'(\w+)="([^"]*)"', matchers))
        assert wire.metric_series(families, name, **wanted), rule["seriesQuery"]

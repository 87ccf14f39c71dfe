"""The load tests (loadtest/) and their report (loadtest/report/).

The unit tests check the metric definitions, the workloads' token counts and the metrics-port parsing
without a server.  The `server` test runs a short bounded sweep with all three Locust users against the real
tritonserver with the random-weight model (on the CPU) in a subprocess (Locust patches the standard library for
gevent, which must not happen inside pytest), and checks that nothing failed, that the throughput is
positive, that the client's token counts agree with the engine's, and that the CSV, JSON and the HTML
report with its images are written.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from served import ROOT, needs_triton

from loadtest import prometheus
from loadtest.metrics import LevelWindow, RequestRecord, count_tokens, flat_summary, percentile, summarize
from loadtest.workloads import (
    CHAT_ASSISTANT_HEADER_TOKENS,
    CHAT_DEFAULT_SYSTEM_TOKENS,
    WORDS,
    make_workload,
    sample_turns,
)
from qwen_triton import wire
from qwen_triton.serving import contract as c


# ------------------------------------------------------------------------------------------------- metrics
def _record(**kw) -> RequestRecord:
    base = {"level": 1, "protocol": "http_stream", "workload": "fixed", "user": 0, "session": 0, "turn": 1,
            "start_s": 0.0, "input_tokens": 8, "requested_tokens": 5, "forced": True}
    return RequestRecord(**{**base, **kw})


def test_ttft_and_itl_follow_genai_perf_definitions():
    r = _record()
    # sent at t0=10.0; responses with 1, 2 and 2 tokens (a UTF-8 group) at 10.1, 10.2, 10.5
    r.finish(10.5, 10.0, [(10.1, 1), (10.2, 2), (10.5, 2)], streaming=True)
    assert r.output_tokens == 5
    assert r.ttft_s == pytest.approx(0.1)
    assert r.latency_s == pytest.approx(0.5)
    assert r.itl_s == pytest.approx((0.5 - 0.1) / (5 - 1))  # first token excluded
    assert r.max_gap_s == pytest.approx(0.3)
    one = _record()
    one.finish(10.2, 10.0, [(10.2, 1)], streaming=True)
    assert one.ttft_s == pytest.approx(0.2) and one.itl_s is None
    flat = _record()
    flat.finish(10.4, 10.0, [(10.4, 5)], streaming=False)
    assert flat.ttft_s is None and flat.itl_s is None and flat.output_tokens == 5


def test_token_count_reads_output_log_probs_as_the_generate_extension_writes_it():
    assert count_tokens(None) is None
    assert count_tokens(0.0) == 1  # one token: a bare number
    assert count_tokens([0.0, -1.5, -0.2]) == 3
    assert count_tokens([[0.0, 0.0]]) == 2
    assert count_tokens(np.zeros((1, 1, 4), np.float32)) == 4


def test_summary_throughput_percentiles_and_failures():
    records = []
    for i in range(10):
        r = _record(start_s=float(i), requested_tokens=11)
        arrivals = [(0.1 + 0.01 * i + 0.05 * k, 1) for k in range(11)]
        r.finish(1.0 + 0.01 * i, 0.0, arrivals, streaming=True)
        r.ok = True
        records.append(r)
    bad = _record(start_s=3.0, error_kind="http_4xx", error="HTTP 400: max_tokens")
    cut = _record(start_s=4.0, cancelled=True)
    s = summarize(records + [bad, cut], LevelWindow(0.0, 11.0))
    assert (s.requests, s.ok, s.failed, s.cancelled) == (12, 10, 1, 1)
    assert s.errors == {"http_4xx": 1}
    assert s.output_tokens == 110 and s.output_token_throughput == pytest.approx(10.0)
    assert s.request_throughput == pytest.approx(10 / 11.0)
    assert s.ttft_s["p50"] == pytest.approx(percentile([0.1 + 0.01 * i for i in range(10)], 50))
    assert s.length_mismatches == 0
    # tokens that arrived before the drain began (here at 5.5 s: requests started at 0..5, each lasting ~1 s)
    steady = summarize(records, LevelWindow(0.0, 11.0, steady_end_s=5.5))
    assert steady.steady_duration_s == pytest.approx(5.5)
    expected = sum(n for r in records for t, n in r.token_times if t <= 5.5)
    assert 50 < expected < 70 and steady.steady_output_token_throughput == pytest.approx(expected / 5.5)
    assert s.steady_output_token_throughput is None
    row = flat_summary(s)
    assert row["ttft_ms_p50"] == pytest.approx(s.ttft_s["p50"] * 1000, abs=1e-3)
    assert row["errors_http_4xx"] == 1
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(float(np.percentile([1, 2, 3, 4], 50)))
    assert percentile([5.0, 1.0, 3.0], 99) == pytest.approx(float(np.percentile([5.0, 1.0, 3.0], 99)))


def _chat_records() -> list[RequestRecord]:
    """Three sessions of 1..3 turns: turn n's TTFT is 0.1 + 0.01 n s, its prompt 40 n tokens; one failed."""
    records = []
    for session, turns in enumerate((1, 2, 3)):
        for turn in range(1, turns + 1):
            r = _record(workload="multiturn", session=session, turn=turn, input_tokens=40 * turn,
                        start_s=float(session))
            r.finish(1.0, 0.0, [(0.1 + 0.01 * turn + 0.001 * session, 1), (1.0, 4)], streaming=True)
            r.ok = True
            records.append(r)
    records.append(_record(workload="multiturn", turn=4, error_kind="timeout"))
    return records


def test_ttft_by_turn_of_chat_sessions():
    s = summarize(_chat_records())
    turns = s.ttft_by_turn
    assert list(turns) == ["1", "2", "3"]  # the failed turn 4 has no successful request
    assert [turns[t]["requests"] for t in turns] == [3, 2, 1]
    assert [turns[t]["mean_input_tokens"] for t in turns] == [40, 80, 120]
    assert turns["1"]["ttft_s"]["p50"] == pytest.approx(0.111)  # 0.110, 0.111, 0.112
    assert turns["2"]["ttft_s"]["p90"] == pytest.approx(0.121 + 0.9 * 0.001)
    assert turns["3"]["ttft_s"]["count"] == 1 and turns["3"]["ttft_s"]["p50"] == pytest.approx(0.132)
    row = flat_summary(s)
    assert row["turn1_requests"] == 3 and row["turn2_ttft_ms_p50"] == pytest.approx(121.5)
    assert row["turn3_ttft_ms_p90"] == pytest.approx(132.0) and "turn4_requests" not in row
    json.dumps(s.as_dict())  # run.json can hold it
    # one-shot workloads (every request its session's first turn): no per-turn section, no columns
    one_shot = summarize([r for r in _chat_records() if r.turn == 1])
    assert one_shot.ttft_by_turn == {} and not any(k.startswith("turn") for k in flat_summary(one_shot))
    # non-streaming users have no TTFT: the turns count requests, with empty distributions
    flat = [_record(turn=t, ok=True) for t in (1, 2)]
    for r in flat:
        r.finish(0.5, 0.0, [(0.5, 5)], streaming=False)
    assert summarize(flat).ttft_by_turn["2"]["ttft_s"]["p50"] is None


def test_report_tables_show_turns_and_the_prefix_cache():
    from loadtest.report.findings import findings
    from loadtest.report.tables import server_table, turn_table

    client = summarize(_chat_records()).as_dict()
    engine = {"prefix_hits": 300.0, "prefix_queries": 400.0, "prefix_hit_rate": 0.75, "prefix_blocks": 9.0}
    levels = [{"concurrency": 2, "client": client, "server": {"available": True, "engine": engine,
                                                                "models": {}}}]
    turns = turn_table(levels)
    assert turns.count("<tr>") == 1 + 3  # a header row, one row per turn
    assert ">111.0<" in turns and ">132.0<" in turns and ">1.19x<" in turns  # turn 3's p50 / turn 1's
    assert "75.0%" in server_table(levels) and ">9<" in server_table(levels)
    said = " ".join(findings(levels, {}))
    assert "<b>75.0%</b> of the 400 prompt tokens" in said and "turn 3 of a chat" in said
    levels[0]["client"] = summarize([r for r in _chat_records() if r.turn == 1]).as_dict()
    assert turn_table(levels) == "" and "of a chat" not in " ".join(findings(levels, {}))


# ------------------------------------------------------------------------------------------------ workloads
def test_workloads_are_seeded_and_shaped():
    for name in ("fixed", "sharegpt", "multiturn"):
        wl = make_workload(name)
        a, b = list(sample_turns(wl, 7, 30)), list(sample_turns(wl, 7, 30))
        assert a == b
        assert a != list(sample_turns(wl, 8, 30))
    fixed = list(sample_turns(make_workload("fixed", input_len=32, output_len=16), 0, 5))
    assert all(t.input_tokens == 32 and t.max_tokens == 16 and t.forced for t in fixed)
    assert all(t.inputs()[c.MIN_LENGTH] == t.inputs()[c.MAX_TOKENS] == 16 for t in fixed)
    assert all("min_tokens" not in t.inputs() for t in fixed)  # upstream's wire name: min_length
    share = list(sample_turns(make_workload("sharegpt"), 0, 2000))
    ins = [t.input_tokens for t in share]
    outs = [t.max_tokens for t in share]
    assert 4 <= min(ins) and max(ins) <= 1024 and max(i + o for i, o in zip(ins, outs)) <= 2048
    assert 120 < np.mean(ins) < 220 and np.median(ins) < np.mean(ins)  # heavy right tail, like ShareGPT
    assert 250 < np.mean(outs) < 420
    chat = list(sample_turns(make_workload("multiturn"), 0, 50))
    assert any(len(t.messages) > 1 for t in chat) and all(t.messages[-1]["role"] == "user" for t in chat)
    with pytest.raises(TypeError, match="no setting"):
        make_workload("fixed", turns=3)


def test_workload_token_counts_are_exact_for_qwen():
    pytest.importorskip("tiktoken")
    pytest.importorskip("dashscope")
    from qwen_triton.chat import parse_messages, render_prompt
    from qwen_triton.chat.tokenizer import QwenTiktokenTokenizer

    tok = QwenTiktokenTokenizer()
    assert all(len(tok.encode(w)) == 1 and len(tok.encode(" " + w)) == 1 for w in WORDS)
    assert len(tok.encode("You are a helpful assistant.")) + 5 == CHAT_DEFAULT_SYSTEM_TOKENS
    assert len(render_prompt(tok, parse_messages([{"role": "user", "content": "the"}]))) == (
        CHAT_DEFAULT_SYSTEM_TOKENS + 1 + 5 + CHAT_ASSISTANT_HEADER_TOKENS)
    for name in ("fixed", "sharegpt", "multiturn"):
        for turn in sample_turns(make_workload(name), 3, 60):
            if turn.text is not None:
                n = len(tok.encode(turn.text))
            else:
                n = len(render_prompt(tok, parse_messages(list(turn.messages))))
            assert n == turn.input_tokens, (name, turn)


# ----------------------------------------------------------------------------------------------- prometheus
METRICS_BEFORE = f"""# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{{model="ensemble",version="1"}} 10
nv_inference_request_failure{{model="ensemble",reason="BACKEND",version="1"}} 0
nv_inference_queue_duration_us{{model="tensorrt_llm",version="1"}} 1000
nv_inference_request_success{{model="tensorrt_llm",version="1"}} 10
{c.METRIC_ENGINE}{{counter="generated_tokens",model="tensorrt_llm",version="1"}} 100
{c.METRIC_ENGINE}{{counter="steps",model="tensorrt_llm",version="1"}} 50
"""
METRICS_AFTER = f"""nv_inference_request_success{{model="ensemble",version="1"}} 30
nv_inference_request_failure{{model="ensemble",reason="BACKEND",version="1"}} 2
nv_inference_queue_duration_us{{model="tensorrt_llm",version="1"}} 41000
nv_inference_request_success{{model="tensorrt_llm",version="1"}} 30
nv_inference_queue_summary_us{{model="tensorrt_llm",version="1",quantile="0.99"}} 5000
{c.METRIC_ENGINE}{{counter="generated_tokens",model="tensorrt_llm",version="1"}} 500
{c.METRIC_ENGINE}{{model="tensorrt_llm",counter="steps",version="1"}} 150
{c.METRIC_ENGINE}{{counter="max_batch_seen",model="tensorrt_llm",version="1"}} 8
{c.METRIC_REQUESTS}{{model="tensorrt_llm",request_type="scheduled",version="1"}} 4
{c.METRIC_REQUESTS}{{model="tensorrt_llm",request_type="waiting",version="1"}} 1
{c.METRIC_KV_BLOCKS}{{kv_cache_block_type="used",model="tensorrt_llm",version="1"}} 10
{c.METRIC_KV_BLOCKS}{{kv_cache_block_type="max",model="tensorrt_llm",version="1"}} 100
"""


def test_metrics_port_deltas_per_level():
    before = prometheus.Snapshot(0.0, wire.parse_metrics(METRICS_BEFORE))
    after = prometheus.Snapshot(10.0, wire.parse_metrics(METRICS_AFTER))
    rows = [prometheus.timeseries_row(after, 4)]
    assert rows[0]["scheduled"] == 4 and rows[0]["kv_used"] == 10 and rows[0]["level"] == 4
    s = prometheus.level_server_summary(before, after, rows, duration_s=4.0)
    ens, eng = s["models"][c.ENSEMBLE], s["models"][c.ENGINE]
    assert ens["success"] == 20 and ens["failure"] == 2 and ens["failure_by_reason"] == {"BACKEND": 2}
    assert eng["avg_queue_ms"] == pytest.approx(40000 / 20 / 1000) and eng["queue_p99_ms"] == 5.0
    e = s["engine"]
    assert e["generated_tokens"] == 400 and e["steps"] == 100 and e["tokens_per_step"] == 4
    assert e["generated_token_throughput"] == 100 and e["kv_used_frac_max"] == pytest.approx(0.1)
    assert prometheus.level_server_summary(before, prometheus.Snapshot(1.0, {}, ok=False), rows, 1.0) == {
        "available": False}


def _prefix_snapshot(t: float, queries: float, hits: float, blocks: float) -> prometheus.Snapshot:
    text = (f'{c.METRIC_PREFIX_QUERIES}{{model="tensorrt_llm",version="1"}} {queries}\n'
            f'{c.METRIC_PREFIX_HITS}{{model="tensorrt_llm",version="1"}} {hits}\n'
            f'{c.METRIC_PREFIX_BLOCKS}{{model="tensorrt_llm",version="1"}} {blocks}\n')
    return prometheus.Snapshot(t, wire.parse_metrics(text))


def test_prefix_cache_hit_rate_is_the_levels_counter_deltas():
    before, after = _prefix_snapshot(0.0, 1000, 100, 3), _prefix_snapshot(5.0, 1800, 500, 7)
    rows = [prometheus.timeseries_row(_prefix_snapshot(2.0, 1400, 300, 12), 2)]
    assert (rows[0]["prefix_blocks"], rows[0]["prefix_queries"], rows[0]["prefix_hits"]) == (12, 1400, 300)
    p = prometheus.prefix_cache_summary(before, after, rows)
    # 400 of the level's 800 prompt tokens came from the cache; the gauge: 7 at the end, 12 at its peak
    assert (p["prefix_queries"], p["prefix_hits"]) == (800, 400) and p["prefix_hit_rate"] == pytest.approx(0.5)
    assert p["prefix_blocks"] == 7 and p["prefix_blocks_max"] == 12
    summary = prometheus.level_server_summary(before, after, rows, 5.0)
    assert summary["engine"]["prefix_hit_rate"] == pytest.approx(0.5)
    row = prometheus.flat_server(summary)
    assert row["srv_prefix_hit_rate"] == 0.5 and row["srv_prefix_blocks"] == 7
    # a counter that went back (the engine model restarted) counts from zero, as Prometheus' increase()
    restarted = prometheus.prefix_cache_summary(before, _prefix_snapshot(9.0, 200, 50, 1), [])
    assert restarted["prefix_hit_rate"] == pytest.approx(0.25) and restarted["prefix_blocks_max"] == 1
    # nothing looked up during the level, or a server without the counters: no rate, not zero
    assert prometheus.prefix_cache_summary(before, before, [])["prefix_hit_rate"] is None
    empty = prometheus.Snapshot(0.0, {})
    assert prometheus.prefix_cache_summary(empty, empty, []) == {
        "prefix_queries": None, "prefix_hits": None, "prefix_hit_rate": None, "prefix_blocks": None,
        "prefix_blocks_max": None}


def test_report_of_a_run_without_server_data(tmp_path):
    """The report copes with a run whose metrics port did not answer and with non-streaming users only."""
    from loadtest.report.cli import main as report_main

    records = []
    for i in range(6):
        r = _record(level=2, protocol="http", start_s=0.1 * i, requested_tokens=4)
        r.finish(0.3, 0.0, [(0.3, 4)], streaming=False)
        r.ok = True
        records.append(r)
    s = summarize(records).as_dict()
    run = {"meta": {"workload": {"name": "fixed"}, "protocols": ["http"], "concurrency": [2]},
           "server": {}, "levels": [{"concurrency": 2, "start_s": 0.0, "end_s": 1.0, "client": s,
                                     "by_protocol": {"http": s}, "server": {"available": False}}]}
    (tmp_path / "run.json").write_text(json.dumps(run))
    with open(tmp_path / "requests.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0].as_row()))
        writer.writeheader()
        writer.writerows(r.as_row() for r in records)
    assert report_main([str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "qwen-triton load test" in page


# ---------------------------------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def default_server(random_served):
    """The session's random-weight model server (conftest.random_served): load tests measure the stack, not
    the model."""
    return random_served.server


@pytest.mark.server
@needs_triton
def test_bounded_sweep_against_the_cpu_server(default_server, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "loadtest.run", "--http-port", str(default_server.http_port),
           "--grpc-port", str(default_server.grpc_port), "--metrics-port", str(default_server.metrics_port),
           "--concurrency", "1,6", "--duration", "5", "--drain-timeout", "30", "--timeout", "60",
           "--input-len", "32", "--output-len", "16", "--protocol", "http_stream,grpc_stream,http",
           "--label", "CI load test", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRITON_")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    run = json.loads((out / "run.json").read_text())
    assert [lv["concurrency"] for lv in run["levels"]] == [1, 6]
    for lv in run["levels"]:
        s = lv["client"]
        assert s["failed"] == 0 and s["cancelled"] == 0, lv["error_samples"]
        assert s["ok"] > 0 and s["output_token_throughput"] > 0 and s["request_throughput"] > 0
        assert s["length_mismatches"] == 0  # forced 16 tokens, counted from output_log_probs
        srv = lv["server"]
        assert srv["available"]
        assert srv["models"][c.ENSEMBLE]["success"] == s["ok"] and srv["models"][c.ENSEMBLE]["failure"] == 0
        assert srv["engine"]["generated_tokens"] == pytest.approx(s["output_tokens"], rel=0.02)
    top = run["levels"][-1]
    assert set(top["by_protocol"]) == {"http_stream", "grpc_stream", "http"}
    for protocol in ("http_stream", "grpc_stream"):
        ps = top["by_protocol"][protocol]
        assert ps["ok"] > 0 and 0 < ps["ttft_s"]["p50"] < ps["latency_s"]["p50"] and ps["itl_s"]["p50"] > 0
    assert top["by_protocol"]["http"]["ttft_s"]["p50"] is None  # non-streaming: latency only
    assert top["server"]["engine"]["scheduled_max"] >= 2  # the users shared engine steps

    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["concurrency"] for r in rows if r["protocol"] == "all"] == ["1", "6"]
    assert float(rows[0]["output_token_throughput"]) > 0 and rows[0]["ttft_ms_p50"]
    with open(out / "requests.csv", newline="") as f:
        requests = list(csv.DictReader(f))
    assert len(requests) == sum(lv["client"]["requests"] for lv in run["levels"])
    assert {r["token_source"] for r in requests} == {c.OUTPUT_LOG_PROBS}
    with open(out / "server_timeseries.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) >= 5

    page = (out / "report.html").read_text()
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 4 and all(len(img) > 10_000 for img in images)
    assert "CI load test" in page and "<table>" in page
    assert not re.search(r'(src|href)="https?://', page)  # one self-contained file
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == [
        "distributions.png", "latency.png", "queue.png", "server.png", "throughput.png"]


@pytest.mark.server
@needs_triton
def test_multiturn_sweep_reports_ttft_by_turn_and_prefix_cache_hits(default_server, tmp_path):
    """Chat sessions of 3..4 turns, each re-sending its history: the client's summary has TTFT per turn,
    and the engine's prefix cache must have found the shared histories (hit rate > 0 over the level)."""
    out = tmp_path / "chat"
    # short turns keep prompts under the shared server's max_input_len (512) and the run to a few seconds
    settings = ("min_turns=3", "max_turns=4", "first_median=40", "followup_median=8", "output_median=8",
                "max_output=12", "sigma=0.3", "max_total=400")
    cmd = [sys.executable, "-m", "loadtest.run", "--http-port", str(default_server.http_port),
           "--grpc-port", str(default_server.grpc_port), "--metrics-port", str(default_server.metrics_port),
           "--concurrency", "2", "--requests", "12", "--warmup", "0", "--drain-timeout", "30",
           "--timeout", "60", "--workload", "multiturn", "--protocol", "http_stream", "--out", str(out),
           *[a for kv in settings for a in ("--wl", kv)]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRITON_")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TTFT p50 by turn: 1: " in proc.stdout and "prefix cache hits" in proc.stdout

    (level,) = json.loads((out / "run.json").read_text())["levels"]
    s = level["client"]
    assert s["failed"] == 0 and s["ok"] == 12, level["error_samples"]
    turns = s["ttft_by_turn"]
    assert {"1", "2", "3"} <= set(turns) and sum(t["requests"] for t in turns.values()) == 12
    assert all(t["ttft_s"]["p50"] > 0 and t["ttft_s"]["p90"] >= t["ttft_s"]["p50"] for t in turns.values())
    assert turns["3"]["mean_input_tokens"] > turns["1"]["mean_input_tokens"]  # the history grows
    e = level["server"]["engine"]
    assert e["prefix_queries"] > 0 and 0 < e["prefix_hits"] <= e["prefix_queries"]
    assert e["prefix_hit_rate"] == pytest.approx(e["prefix_hits"] / e["prefix_queries"])
    assert e["prefix_hit_rate"] > 0 and e["prefix_blocks"] is not None

    with open(out / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["turn1_ttft_ms_p50"]) > 0 and float(row["turn3_ttft_ms_p90"]) > 0
    assert float(row["srv_prefix_hit_rate"]) > 0
    page = (out / "report.html").read_text()
    assert "Time to first token by turn" in page and "prefix hits" in page

"""A short soak (loadtest/soak.py) against the served stack on the CPU: the supervisor's HTTP front and
tritonserver with the random-weight model and a KV pool small enough that bursts preempt.  It must
pass: no lost request, crash, hang, 5xx for a client error or leaked block; greedy texts as sent alone;
counters balanced; memory flat across rounds.  (The checks are the tool's; see docs/soak.md.)"""
from __future__ import annotations

import json

import pytest
from served import needs_triton, supervised

from loadtest import soak
from loadtest.soak_catalogue import CATALOGUE

pytestmark = [pytest.mark.server, pytest.mark.slow, needs_triton]
# 64 blocks of 16 tokens: one 256-token reply takes 17, so a burst of 5 overflows the pool
SETS = ("max_num_seqs=8", "max_input_len=512", "max_output_len=256", "num_kv_blocks=64", "block_size=16")


@pytest.fixture(scope="module")
def report(tmp_path_factory, random_checkpoint):
    """Run the soak once (about 40 s) against a supervised server of its own (its small KV pool); its JSON
    report."""
    root = tmp_path_factory.mktemp("soak")
    with supervised(root, SETS, random_checkpoint.parent) as supervisor:
        server, out = supervisor.server, root / "report.json"
        code = soak.main(["--http-port", str(supervisor.http_port), "--grpc-port", str(server.grpc_port),
                          "--metrics-port", str(server.metrics_port), "--server-pid", str(server.pid),
                          "--rounds", "3", "--requests-per-round", "24", "--concurrency", "6",
                          "--duration", "30", "--burst-every", "20", "--seed", "7", "--fault", "none",
                          "--out", str(out)])
        data = json.loads(out.read_text())
        data["exit_code"] = code
        yield data


def _failed(report: dict) -> list[str]:
    return [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["ok"]]


def test_the_soak_passes(report):
    assert report["verdict"] == "PASS" and report["exit_code"] == 0, "\n".join(_failed(report))


def test_every_kind_and_protocol_was_exercised(report):
    kinds, protocols = report["counts"]["by_kind"], report["counts"]["by_protocol"]
    assert set(kinds) == {"greedy", "sampled", "chat", "cancel", "malformed", "burst"}, kinds
    assert set(protocols) == {"http", "sse", "grpc_stream", "grpc"}, protocols
    assert kinds["cancel"].get("cancelled", 0) > 0, kinds["cancel"]
    assert len(report["rounds"]) >= 2, report["rounds"]


def test_every_safe_catalogue_entry_was_sent_and_answered_4xx(report):
    rows = {m["name"]: m for m in report["malformed"]}
    assert set(rows) == {e.name for e in CATALOGUE if not e.dangerous}
    assert [name for name, m in rows.items() if m["ok"] is not True] == []


def test_bursts_preempted_and_the_pool_came_back(report):
    assert report["bursts"]["exhausts_pool"] and report["bursts"]["sent"] > 0, report["bursts"]
    assert report["engine"]["delta"]["preemptions"] > 0, report["engine"]
    kv = report["idle"]["metrics"]["kv"]
    assert report["idle"]["idle"] and kv["free"] == kv["max"], report["idle"]
    assert report["engine"]["balanced"], report["engine"]["balance"]


def test_memory_of_every_process_was_sampled_each_round(report):
    names = set(report["rss_flat"])
    assert {"tritonserver", "stub:tensorrt_llm", "stub:ensemble", "stub:tensorrt_llm_bls"} <= names, names
    assert all(r["ok"] for r in report["rss_flat"].values()), report["rss_flat"]

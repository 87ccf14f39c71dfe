"""The soak test's verdict (``python -m loadtest.soak``): each request judged, the run's checks, the JSON
report and its one-screen summary.  Plain functions over the records the run collected; no I/O but the
caller's."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from .soak_catalogue import Malformed, matches
from .soak_client import Outcome

SAMPLES = 5  # failure samples kept per reason


@dataclass
class Record:
    """One job as it ran: what was sent (kind, protocol, model, catalogue entry, greedy reference) and
    how it ended; ``start`` / ``end`` in seconds since the run's start."""

    index: int
    round: int
    kind: str
    protocol: str
    model: str
    outcome: Outcome
    start: float
    end: float
    entry: Malformed | None = None
    expect_text: str | None = None
    requests: int = 1

    def sample(self, failure: str) -> dict[str, Any]:
        """The record as a failure sample in the report."""
        o = self.outcome
        out = {"failure": failure, "index": self.index, "round": self.round, "kind": self.kind,
               "protocol": self.protocol, "model": self.model, "result": o.result, "status": o.status,
               "error": o.error[:300], "seconds": round(o.seconds, 2), "start": self.start, "end": self.end}
        if self.entry is not None:
            out["entry"] = self.entry.name
        if self.expect_text is not None and o.result == "ok":
            out.update(expected=self.expect_text[:200], got=o.text[:200])
        return out


def in_window(rec: Record, window: tuple[float, float] | None) -> bool:
    """Whether a record overlaps the fault window (start, end) in which errors are expected."""
    return window is not None and rec.start < window[1] and rec.end > window[0]


def judge_malformed(entry: Malformed, o: Outcome) -> str | None:
    """Why a malformed request's answer is wrong (None: a 4xx, or a gRPC error, naming the problem)."""
    if o.result == "hang":
        return "malformed: hang"
    if o.result != "error":
        return f"malformed: accepted ({o.result}, HTTP {o.status})"
    if o.status is None and entry.protocol != "grpc":
        return "malformed: no HTTP answer (connection dropped: did the server crash?)"
    if o.status is not None and o.status >= 500:
        return "malformed: 5xx for a client error"
    if o.status is not None and not 400 <= o.status < 500:
        return f"malformed: HTTP {o.status}, not 4xx"
    if not matches(entry, o.error):
        return "malformed: error does not name the problem"
    return None


def judge(rec: Record, window: tuple[float, float] | None) -> str | None:
    """Why a record is a failure, or None.  In the fault window errors are expected, hangs never are."""
    o = rec.outcome
    if o.result == "hang":
        return "hang"
    if o.result == "exception":
        return "client exception"
    faulted = in_window(rec, window) and o.result == "error"
    if rec.entry is not None:
        return None if faulted else judge_malformed(rec.entry, o)
    if o.result == "error":
        return None if faulted else f"error on a well-formed request (HTTP {o.status})"
    if rec.expect_text is not None and o.result == "ok" and o.text != rec.expect_text:
        return "greedy text differs from the alone reply"
    return None


def failures(records: list[Record], window: tuple[float, float] | None) -> dict[str, dict[str, Any]]:
    """{reason: {"count", "samples"}} over every record."""
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        reason = judge(rec, window)
        if reason is not None:
            slot = out.setdefault(reason, {"count": 0, "samples": []})
            slot["count"] += 1
            if len(slot["samples"]) < SAMPLES:
                slot["samples"].append(rec.sample(reason))
    return out


def counts(records: list[Record]) -> dict[str, Any]:
    """Requests by kind, protocol and model, each split by result."""
    table: dict[str, dict[str, Counter]] = {"by_kind": defaultdict(Counter), "by_protocol": defaultdict(Counter),
                                            "by_model": defaultdict(Counter)}
    for rec in records:
        for key, value in (("by_kind", rec.kind), ("by_protocol", rec.protocol), ("by_model", rec.model)):
            table[key][value][rec.outcome.result] += 1
    out: dict[str, Any] = {k: {name: dict(c) for name, c in sorted(v.items())} for k, v in table.items()}
    out["jobs"] = len(records)
    out["requests"] = sum(r.requests for r in records)
    return out


def malformed_table(entries: tuple[Malformed, ...], records: list[Record],
                    window: tuple[float, float] | None) -> list[dict[str, Any]]:
    """Per catalogue entry: what it expects, what came back (answer -> count), and whether all passed."""
    got: dict[str, Counter] = defaultdict(Counter)
    bad: dict[str, Counter] = defaultdict(Counter)
    for rec in records:
        if rec.entry is None:
            continue
        o = rec.outcome
        answer = f"{o.result} {o.status if o.status is not None else 'grpc'}: {o.error[:160]}"
        got[rec.entry.name][answer] += 1
        reason = judge(rec, window)
        if reason is not None:
            bad[rec.entry.name][reason] += 1
    rows = []
    for entry in entries:
        rows.append({**entry.describe(), "sent": sum(got[entry.name].values()), "got": dict(got[entry.name]),
                     "failures": dict(bad[entry.name]),
                     "ok": None if not got[entry.name] else not bad[entry.name]})  # None: not sent
    return rows


def rss_flat(rounds: list[dict[str, Any]], slack_mb: float, slack_frac: float) -> dict[str, dict[str, Any]]:
    """Per process: the first and last round's RSS and whether last <= first + max(slack_mb, frac * first)."""
    samples = [r for r in rounds if r["rss_mb"]]
    if len(samples) < 2:
        return {}
    first, last = samples[0]["rss_mb"], samples[-1]["rss_mb"]
    out = {}
    for name in sorted(set(first) & set(last)):
        limit = first[name] + max(slack_mb, slack_frac * first[name])
        out[name] = {"first": first[name], "last": last[name], "limit": round(limit, 1),
                     "growth": round(last[name] - first[name], 1), "ok": last[name] <= limit}
    return out


def check(name: str, ok: bool, detail: Any) -> dict[str, Any]:
    """One line of the report's checks."""
    return {"name": name, "ok": bool(ok), "detail": detail}


def verdict(report: dict[str, Any]) -> None:
    """Fill in ``pass``, ``verdict`` and ``reasons`` from the checks."""
    reasons = [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["ok"]]
    report.update({"pass": not reasons, "verdict": "PASS" if not reasons else "FAIL", "reasons": reasons})


def summary(report: dict[str, Any]) -> str:
    """The report on one screen."""
    s, cnt = report["settings"], report["counts"]
    lines = [f"soak {report['verdict']}: {cnt['jobs']} jobs ({cnt['requests']} requests) in "
             f"{report['elapsed_s']:.0f} s, {len(report['rounds'])} rounds, concurrency {s['concurrency']}, "
             f"seed {s['seed']}, fault {s['fault']}"]
    for kind, results in cnt["by_kind"].items():
        lines.append(f"  {kind:10s} " + ", ".join(f"{k} {v}" for k, v in sorted(results.items())))
    lines.append("  protocols  " + "; ".join(f"{p}: {sum(r.values())}" for p, r in cnt["by_protocol"].items()))
    mal = report["malformed"]
    bad, sent = [m for m in mal if m["ok"] is False], [m for m in mal if m["ok"] is not None]
    lines.append(f"  catalogue  {len(sent) - len(bad)}/{len(sent)} entries sent were answered as expected"
                 + (f" ({len(mal) - len(sent)} not sent)" if len(sent) < len(mal) else ""))
    for m in bad:
        answer = next(iter(m["got"]))
        lines.append(f"    {m['name']:30s} {', '.join(m['failures'])} <- {answer[:90]}")
    b, e = report["bursts"], report["engine"]
    lines.append(f"  bursts     {b['sent']} requests in {b['bursts']} bursts of {b['size']} x {b['tokens']} tokens "
                 f"(pool {b['kv_max']} blocks, exhausts: {b['exhausts_pool']}); "
                 f"preemptions +{e['delta'].get('preemptions', 0):.0f}" if b["bursts"] else "  bursts     none")
    lines.append(f"  engine     {e['balance']}")
    for name, r in report["rss_flat"].items():
        lines.append(f"  rss {name:22s} {r['first']:8.1f} -> {r['last']:8.1f} MB (limit {r['limit']:.1f})"
                     + ("" if r["ok"] else "  GROWS"))
    gaps = report["readiness"]["gaps"]
    lines.append(f"  readiness  {report['readiness']['samples']} polls, {len(gaps)} gaps {gaps[:3]}")
    if report.get("fault"):
        lines.append(f"  fault      {report['fault']}")
    for reason, f in report["failures"].items():
        lines.append(f"  FAILED {f['count']:4d} x {reason}: e.g. {f['samples'][0]}"[:240])
    lines += [f"  - {r}"[:240] for r in report["reasons"]]
    lines.append(f"report: {report['out']}")
    return "\n".join(lines)


def engine_summary(before: dict[str, Any] | None, idle: dict[str, Any] | None, restarted: bool) -> dict[str, Any]:
    """The engine's counters before and after (a restarted engine counts from 0) and their balance."""
    first = {} if restarted or not before else before.get("engine", {})
    after = ((idle or {}).get("metrics") or {}).get("engine", {})
    delta = {k: v - first.get(k, 0.0) for k, v in after.items()}
    parts = {k: after.get(k, 0.0) for k in ("admitted", "finished", "aborted", "failed", "rejected")}
    balanced = bool(after) and parts["admitted"] == parts["finished"] + parts["aborted"] + parts["failed"]
    text = ("no counters (the metrics port or the engine is gone)" if not after else
            "admitted {admitted:.0f} = finished {finished:.0f} + aborted {aborted:.0f} + failed {failed:.0f}"
            " (rejected {rejected:.0f})".format(**parts) + ("" if balanced else "  UNBALANCED"))
    return {"before": first, "after": after, "delta": delta, "balanced": balanced, "balance": text}


def _gaps_outside(gaps: list[dict[str, float]], window: tuple[float, float] | None) -> list[dict[str, float]]:
    if window is None:
        return list(gaps)
    return [g for g in gaps if g["start"] < window[0] - 0.5 or (g["end"] >= 0 and g["end"] > window[1] + 5)]


def run_checks(report: dict[str, Any], records: list[Record], dispatched: int,
               window: tuple[float, float] | None, fault: str, greedy_exact: bool = True) -> list[dict[str, Any]]:
    """The checks on the requests, readiness, the engine's state afterwards and memory.  Without
    ``greedy_exact`` greedy replies that differ are reported in the check's detail, not failed."""
    fails = report["failures"]
    greedy = {k: v["count"] for k, v in fails.items() if k.startswith("greedy")}
    malformed = {k: v["count"] for k, v in fails.items() if k.startswith("malformed")}
    other = {k: v["count"] for k, v in fails.items() if k not in greedy and k not in malformed}
    checked = sum(r.expect_text is not None and r.outcome.result == "ok" for r in records)
    bad_entries = [m["name"] for m in report["malformed"] if m["ok"] is False]
    out = [check("no request lost", dispatched == len(records), f"{dispatched} sent, {len(records)} ended"),
           check("well-formed requests complete (no hang, error or client exception)", not other, other or "all"),
           check("greedy replies equal the alone replies" if greedy_exact else
                 "greedy replies compared with the alone replies (drift reported, not failed)",
                 not greedy or not greedy_exact,
                 {"differ": greedy, "compared": checked} if greedy else f"{checked} compared"),
           check("malformed requests get a 4xx naming the problem", not malformed,
                 {"failures": malformed, "entries": bad_entries} if malformed else "all"),
           check("ready throughout", not _gaps_outside(report["readiness"]["gaps"], window),
                 _gaps_outside(report["readiness"]["gaps"], window) or f"{report['readiness']['samples']} polls")]
    out += _idle_checks(report, records, fault)
    flat = report["rss_flat"]
    grows = {k: v for k, v in flat.items() if not v["ok"]}
    out.append(check("resident memory flat across rounds", not grows,
                     grows or ({k: v["growth"] for k, v in flat.items()} if flat else "fewer than 2 rounds sampled")))
    return out


def _idle_checks(report: dict[str, Any], records: list[Record], fault: str) -> list[dict[str, Any]]:
    idle, eng, bursts = report["idle"], report["engine"], report["bursts"]
    if idle is None:
        return []
    snap = idle.get("metrics") or {}
    kv, req = snap.get("kv", {}), snap.get("requests", {})
    out = [check("KV pool all free and nothing active afterwards", idle["idle"],
                 {"kv": kv, "active": req.get("active"), "waiting": req.get("waiting"), "waited_s": idle["waited_s"]}),
           check("engine counters balance", eng["balanced"], eng["balance"])]
    if fault != "kill-engine":
        out.append(check("no request failed in the engine", eng["delta"].get("failed", 0) == 0,
                         f"failed +{eng['delta'].get('failed', 0):.0f}"))
    cancelled = sum(r.outcome.result == "cancelled" for r in records)
    if fault == "none":
        aborted = eng["delta"].get("aborted", 0)
        out.append(check("cancellations reach the engine", aborted >= cancelled,
                         f"{cancelled} cancelled, aborted +{aborted:.0f}"))
    if bursts["exhausts_pool"] and bursts["sent"]:
        pre = eng["delta"].get("preemptions", 0)
        out.append(check("bursts make the engine preempt", pre > 0, f"preemptions +{pre:.0f}"))
    return out


def process_checks(before: dict[str, int], after: dict[str, int], fault: str) -> list[dict[str, Any]]:
    """Every process of the start still runs as the same pid (not with sigterm; the engine may be new
    with kill-engine)."""
    if fault == "sigterm":
        return []
    changed = {name: [pid, after.get(name)] for name, pid in before.items()
               if after.get(name) != pid and not (fault == "kill-engine" and "tensorrt_llm" == name[5:])}
    return [check("no process died or restarted", not changed, changed or f"{len(before)} processes")]

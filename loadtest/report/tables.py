"""The page's HTML pieces: numbers formatted, headline cards, tables of the client's and the server's view
per level, the targets, and the run's settings.  Plain strings: no matplotlib here."""
from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from qwen_triton.serving import contract as c

from .rundir import get

PROTO_NAMES = MappingProxyType({"http_stream": "HTTP SSE", "grpc_stream": "gRPC stream",
                                "http": "HTTP (non-streaming)"})
QUEUE_MODELS = (c.ENSEMBLE, c.PREPROCESSING, c.ENGINE, c.POSTPROCESSING)  # the server table's last columns
NO_REFERENCE = '<span class="badge info">no reference</span>'


def fmt(v: Any, digits: int = 1, scale: float = 1.0, unit: str = "") -> str:
    """A number for a cell (times ``scale``, ``digits`` decimals, thousands separated; a dash for none); any
    other value escaped."""
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
    """Seconds written as milliseconds."""
    return fmt(v, digits, 1000.0)


def card(label: str, value: str, unit: str = "", note: str = "", cls: str = "") -> str:
    """A headline number (``value`` is HTML) with its label, unit and a note."""
    unit_html = f"<small>{html.escape(unit)}</small>" if unit else ""
    return (f'<div class="card {cls}"><div class="label">{html.escape(label)}</div>'
            f'<div class="value">{value}{unit_html}</div><div class="note">{note}</div></div>')


def table(groups: list[tuple[str, int]] | None, headers: list[str], rows: list[list[str]],
          seps: Sequence[int] = ()) -> str:
    """A table; ``groups`` (title, columns spanned) head the columns, ``seps`` are the columns with a rule
    on their left; a cell that starts with ``<td`` or ``<th`` is taken as is."""
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


def client_table(levels_data: list[dict], key: str = "client",
                 label_fn: Callable[[dict], dict | None] | None = None) -> str:
    """Counts, rates and TTFT / ITL / latency percentiles per level (or per row ``label_fn`` gives: the
    summary of a row with its label in ``_label``)."""
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


def turn_table(levels_data: list[dict]) -> str:
    """Time to first token by turn of a chat session, per level: requests, mean prompt tokens, TTFT
    p50 / p90 / p99 and p50 against turn 1's; empty when no level has turns (one-shot workloads)."""
    headers = ["concurrency", "turn", "requests", "prompt tokens", "p50", "p90", "p99", "p50 / turn 1"]
    rows = []
    for lv in levels_data:
        turns = get(lv, "client", "ttft_by_turn") or {}
        first = get(turns, "1", "ttft_s", "p50")
        for turn, entry in sorted(turns.items(), key=lambda kv: int(kv[0])):
            ttft = entry.get("ttft_s") or {}
            ratio = ttft.get("p50") / first if first and ttft.get("p50") is not None else None
            rows.append([str(lv["concurrency"]), html.escape(turn), fmt(entry.get("requests"), 0),
                         fmt(entry.get("mean_input_tokens"), 0),
                         *[ms(ttft.get(q)) for q in ("p50", "p90", "p99")], fmt(ratio, 2, unit="x")])
    if not rows:
        return ""
    return table([("", 4), ("TTFT (ms)", 3), ("", 1)], headers, rows, seps=(4, 7))


def server_table(levels_data: list[dict]) -> str:
    """Triton's counts, the engine's gauges, its prefix cache (hit rate over the level in prompt tokens,
    cached blocks at the level's end) and Triton's queue time per model, per level."""
    headers = ["concurrency", "ensemble ok", "ensemble failed", "gen tok/s", "tok / step", "batch mean",
               "batch peak", "waiting peak", "KV peak", "preempt.", "prefix hits", "cached blocks",
               "ensemble", "pre", "engine", "post"]
    groups = [("", 1), ("Triton", 2), ("engine (its own gauges)", 9), ("mean queue time (ms)", 4)]
    rows = []
    for lv in levels_data:
        srv = lv.get("server") or {}
        if not srv.get("available"):
            rows.append([str(lv["concurrency"])] + ["–"] * (len(headers) - 1))
            continue
        e, m = srv["engine"], srv["models"]
        fail = get(m, c.ENSEMBLE, "failure") or 0
        reasons = get(m, c.ENSEMBLE, "failure_by_reason") or {}
        fail_text = f"{fail:.0f}" + (" (" + ", ".join(f"{k} {v:.0f}" for k, v in reasons.items()) + ")"
                                      if reasons else "")
        rows.append([
            str(lv["concurrency"]), fmt(get(m, c.ENSEMBLE, "success"), 0),
            f'<td class="{"bad" if fail else "ok"}">{html.escape(fail_text)}</td>',
            fmt(e.get("generated_token_throughput"), 1), fmt(e.get("tokens_per_step"), 2),
            fmt(e.get("scheduled_mean"), 1), fmt(e.get("scheduled_max"), 0), fmt(e.get("waiting_max"), 0),
            fmt(e.get("kv_used_frac_max"), 1, 100.0, "%"), fmt(e.get("preemptions"), 0),
            fmt(e.get("prefix_hit_rate"), 1, 100.0, "%"), fmt(e.get("prefix_blocks"), 0),
            *[fmt(get(m, model, "avg_queue_ms"), 2) for model in QUEUE_MODELS],
        ])
    return table(groups, headers, rows, seps=(1, 3, 12))


def badge(ok: bool) -> str:
    """met / not met."""
    return f'<span class="badge {"ok" if ok else "bad"}">{"met" if ok else "not met"}</span>'


def targets_section(levels_data: list[dict], offline: Mapping[str, float] | None, step_ms: float | None) -> str:
    """The T5 (latency at the lowest level) and T3 (throughput against the offline engine) lines."""
    if not levels_data:
        return ""
    items = _t5_items(min(levels_data, key=lambda lv: lv["concurrency"]), step_ms)
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


def _t5_items(low: dict, step_ms: float | None) -> list[str]:
    """T5 at the lowest level: TTFT p50 against 30 ms, ITL p50 against 1.1x the batch-1 step."""
    items = []
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
    return items


def meta_list(run: dict) -> str:
    """The run's settings, server, host and versions."""
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

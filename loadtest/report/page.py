"""The page: its sections in order, the figures rendered and embedded, the style sheet.

:func:`build_html` is the only entry; it imports the plotting modules (matplotlib, numpy) when it runs.
"""
from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from qwen_triton.serving import contract as c

from .findings import findings
from .rundir import RunFiles, get
from .tables import (
    PROTO_NAMES,
    card,
    client_table,
    fmt,
    meta_list,
    ms,
    server_table,
    targets_section,
    turn_table,
)

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


CAPTIONS = MappingProxyType({
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
    "server": (
        "The whole run; grey spans are the levels. Running: sequences in the engine's batch "
        "(<code>scheduled</code>); waiting: requests the engine has queued (their sum is "
        "<code>active</code>). KV cache: blocks in use. Tokens / s from the engine's "
        "generated_tokens counter between scrapes."),
    "queue": "Triton's mean queue time per request of each model over each level.",
})

TURNS_NOTE = (
    "Chat sessions: turn n sends the whole conversation so far (n &minus; 1 exchanges) plus a new user "
    "message, so its prompt grows with n. With prefix caching the shared history's KV is reused and only "
    "the new tokens are computed: a later turn's TTFT near turn 1's is what the cache buys; TTFT growing "
    "with the prompt means the history is computed again (see <i>prefix hits</i> in the server view).")


def img_tag(data: bytes, alt: str) -> str:
    """The PNG inline, base64: the page stays one file."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def figure(data: bytes | None, alt: str, caption: str) -> str:
    """A figure with its caption; nothing for a figure the run could not draw."""
    if data is None:
        return ""
    return f"<figure>{img_tag(data, alt)}<figcaption>{caption}</figcaption></figure>"


def build_html(files: RunFiles, title: str, offline: Mapping[str, float] | None = None,
               step_ms: float | None = None, plots_dir: Path | None = None) -> str:
    """The whole page of a run; the figures also go to ``plots_dir/<name>.png`` when given."""
    run = files.run
    levels_data = sorted(run.get("levels", []), key=lambda lv: lv["concurrency"])
    figs = render_figures(levels_data, files) if levels_data else {}
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        for name, data in figs.items():
            if data is not None:
                (plots_dir / f"{name}.png").write_bytes(data)
    parts = [_head(run, levels_data, title), _cards(levels_data)]
    found = findings(levels_data, run)
    if found:
        parts.append('<div class="findings"><b>At a glance</b><ul>' + "".join(f"<li>{f}</li>" for f in found)
                     + "</ul></div>")
    if not levels_data:
        parts.append("<p>No level completed: nothing to show.</p>")
    parts += [_client_view(levels_data, figs), _server_view(levels_data, figs),
              targets_section(levels_data, offline, step_ms), _errors(levels_data),
              "<h2>Run</h2>", meta_list(run), _files_note()]
    return "\n".join(p for p in parts if p)


def render_figures(levels_data: list[dict], files: RunFiles) -> dict[str, bytes | None]:
    """Every figure of the page by name (None: nothing to draw), drawn in the report's style."""
    from . import client_plots, server_plots  # matplotlib: only when a page is rendered
    from .charts import styled

    with styled():
        return {"throughput": client_plots.plot_throughput(levels_data),
                "latency": client_plots.plot_latency(levels_data),
                "distributions": client_plots.plot_distributions(levels_data, files.requests),
                "server": server_plots.plot_server_timeline(levels_data, files.series),
                "queue": server_plots.plot_queue(levels_data)}


def _head(run: dict, levels_data: list[dict], title: str) -> str:
    """The document's head and the page's title lines."""
    meta = run.get("meta", {})
    protocols = ", ".join(PROTO_NAMES.get(p, p) for p in meta.get("protocols", []))
    subtitle = (f"{html.escape(str(meta.get('workload', {}).get('name', '')))} workload &middot; "
                f"{html.escape(protocols)} &middot; "
                f"concurrency {html.escape(', '.join(str(lv['concurrency']) for lv in levels_data))}")
    return "\n".join([
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{CSS}</style></head><body><main>",
        f"<header><h1>{html.escape(title)}</h1><p class=sub>{subtitle}</p>",
        (f"<p class=sub>{html.escape(str(meta.get('started_at', '')))} &middot; server "
         f"{html.escape(str(get(run, 'server', 'http_url') or ''))} &middot; commit "
         f"{html.escape(str(meta.get('git_commit') or '?'))}</p></header>")])


def _cards(levels_data: list[dict]) -> str:
    """The headline numbers: peak throughput, TTFT and ITL at the lowest level (TTFT at the highest too),
    requests, failures."""
    cards = []
    if levels_data:
        best = max(levels_data, key=lambda lv: lv["client"]["output_token_throughput"])
        low, hi, bc = levels_data[0], levels_data[-1], best["client"]
        users = f"{low['concurrency']} user{'s' if low['concurrency'] > 1 else ''}"
        cards.append(card("peak output throughput", fmt(bc["output_token_throughput"], 0), "tok/s",
                          f"at {best['concurrency']} users, {fmt(bc['request_throughput'], 2)} req/s"))
        if get(low, "client", "ttft_s", "p50") is not None:
            cards.append(card("time to first token", ms(get(low, "client", "ttft_s", "p50")), "ms",
                              f"p50 at {users}; p99 {ms(get(low, 'client', 'ttft_s', 'p99'))} ms"))
        if get(low, "client", "itl_s", "p50") is not None:
            cards.append(card("inter-token latency", ms(get(low, "client", "itl_s", "p50"), 2), "ms",
                              f"p50 at {users}; p99 {ms(get(low, 'client', 'itl_s', 'p99'), 2)} ms"))
        if len(levels_data) > 1 and get(hi, "client", "ttft_s", "p50") is not None:
            cards.append(card(f"TTFT at {hi['concurrency']} users", ms(get(hi, "client", "ttft_s", "p50")),
                              "ms", f"p50; p99 {ms(get(hi, 'client', 'ttft_s', 'p99'))} ms"))
    total_ok = sum(lv["client"]["ok"] for lv in levels_data)
    total_failed = sum(lv["client"]["failed"] for lv in levels_data)
    total_cancelled = sum(lv["client"]["cancelled"] for lv in levels_data)
    srv_failed = sum((get(lv, "server", "models", c.ENSEMBLE, "failure") or 0) for lv in levels_data)
    cards.append(card("requests", fmt(total_ok, 0), "ok",
                      f"{total_cancelled} cancelled at level ends" if total_cancelled else "over all levels"))
    cards.append(card("failures", str(total_failed), "", f"server counted {srv_failed:.0f}",
                      "bad" if total_failed or srv_failed else "ok"))
    return f'<div class="cards">{"".join(cards)}</div>'


def _client_view(levels_data: list[dict], figs: Mapping[str, bytes | None]) -> str:
    """Throughput and latency figures, the client's table per level and per protocol."""
    parts = ["<h2>Throughput</h2>",
             figure(figs.get("throughput"), "throughput against concurrency", CAPTIONS["throughput"]),
             "<h2>Latency</h2>",
             figure(figs.get("latency"), "latency percentiles against concurrency", CAPTIONS["latency"]),
             figure(figs.get("distributions"), "latency distributions", CAPTIONS["distributions"]),
             "<h3>Client view, per level</h3>", client_table(levels_data)]
    turns = turn_table(levels_data)
    if turns:
        parts += ["<h3>Time to first token by turn</h3>", f'<p class="note">{TURNS_NOTE}</p>', turns]
    multi = [lv for lv in levels_data if len(lv.get("by_protocol", {})) > 1]
    if multi:
        rows = [{"concurrency": lv["concurrency"], "_s": s,
                 "_label": f"{lv['concurrency']} &middot; {html.escape(PROTO_NAMES.get(proto, proto))}"}
                for lv in multi for proto, s in lv["by_protocol"].items()]
        parts += ["<h3>Per protocol</h3>", client_table(rows, label_fn=lambda d: d["_s"])]
    return "\n".join(p for p in parts if p)


def _server_view(levels_data: list[dict], figs: Mapping[str, bytes | None]) -> str:
    """The engine's gauges over the run, Triton's queue times, the server's table per level."""
    queue_fig = figure(figs.get("queue"), "Triton queue time per model", CAPTIONS["queue"])
    parts = [
        "<h2>Server view</h2>",
        '<p class="note">Scraped from Triton\'s metrics port during the run: the engine\'s gauges '
        f"(<code>{c.METRIC_REQUESTS}</code>, <code>{c.METRIC_KV_BLOCKS}</code>, "
        f"<code>{c.METRIC_ENGINE}</code>) and Triton's per-model counters "
        "(<code>nv_inference_*</code>), compared between the start and the end of each level.</p>",
        figure(figs.get("server"), "server time series", CAPTIONS["server"]),
        f'<div class="row">{queue_fig}<div class="card notes">'
        "<b>Reading the server view</b><ul><li>The engine batches inflight and keeps its own "
        "queue: requests held back by a full batch show as <i>waiting</i> in the engine's gauge, "
        "not in Triton's queue time.</li>"
        "<li>Triton's queue time of pre- and postprocessing grows when their instances are "
        "busy: every streamed token passes through postprocessing once.</li>"
        "<li><i>Tokens / step</i> is the engine's mean batch while it generated; <i>KV peak</i> the "
        "largest share of KV-cache blocks in use; <i>preempt.</i> sequences evicted for lack of "
        "blocks.</li>"
        "<li><i>Prefix hits</i>: the share of the level's prompt tokens whose KV came from the prefix "
        f"cache (<code>{c.METRIC_PREFIX_HITS}</code> / <code>{c.METRIC_PREFIX_QUERIES}</code> over the "
        "level); <i>cached blocks</i>: free KV blocks still holding a reusable prefix at its end.</li>"
        "</ul></div></div>",
        server_table(levels_data)]
    return "\n".join(p for p in parts if p)


def _errors(levels_data: list[dict]) -> str:
    """The error kinds and samples, or that every request succeeded; replies of the wrong forced length."""
    errors = [(lv["concurrency"], e) for lv in levels_data for e in lv.get("error_samples", [])]
    parts = ["<h2>Errors</h2>"]
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
        total_ok = sum(lv["client"]["ok"] for lv in levels_data)
        cancelled = sum(lv["client"]["cancelled"] for lv in levels_data)
        cut = f" ({cancelled} cut off at the end of a level)" if cancelled else ""
        parts.append(f'<p><span class="badge ok">none</span> every request of {total_ok} succeeded{cut}.</p>')
    mism = sum(lv["client"].get("length_mismatches", 0) for lv in levels_data)
    if mism:
        parts.append(f'<p class="note"><span class="badge bad">{mism}</span> replies of forced length had a '
                     f"different token count than asked for: check the token counting "
                     f"({c.OUTPUT_LOG_PROBS}).</p>")
    return "\n".join(parts)


def _files_note() -> str:
    """How tokens are counted, the run's files, the footer and the end of the document."""
    return ('<p class="note">Output tokens are the engine\'s count: the length of '
            f'<code>{c.OUTPUT_LOG_PROBS}</code> in every response, not characters of text. Files: '
            '<code>run.json</code>, <code>summary.csv</code>, '
            '<code>requests.csv</code>, <code>server_timeseries.csv</code>, <code>plots/</code>.</p>\n'
            "<footer>qwen-triton load test report &middot; loadtest/report</footer>"
            "</main></body></html>")

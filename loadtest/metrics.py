"""Client-side serving metrics, as GenAI-Perf and vLLM's serving benchmark define them.

Per request (:class:`RequestRecord`):

* **TTFT** -- from sending the request to the first response that carries at least one output token.
* **ITL** (inter-token latency, vLLM's TPOT) -- ``(latency - TTFT) / (output tokens - 1)``: the first
  token is excluded; undefined for a request with fewer than two tokens.
* **latency** -- from sending to the last response (end to end).

Per level of concurrency (:func:`summarize`): the percentiles (p50/p90/p99, mean, min, max) of those over
the successful requests; **output tokens/s** = all output tokens of successful requests / duration;
**requests/s** = successful requests / duration, where the duration runs from the level's first request
to its last completion; and the count of failures by kind.

For chat sessions (the ``multiturn`` workload) the summary also gives **TTFT by turn**
(:func:`ttft_by_turn`): turn 1 is a conversation's first request, turn n re-sends the n - 1 exchanges
before it, so a later turn's TTFT near the first turn's shows that its long shared history was not
computed again (the prefix cache).  One-shot workloads leave it empty.

Output tokens are counted from the engine's outputs, never from text: the load test asks for
``return_log_probs``, so every response of the ensemble carries ``output_log_probs`` with one value per
token in that response (our engine groups tokens only to keep UTF-8 characters whole), and the count is
the length of that tensor -- the HTTP generate extension writes one element as a bare number, several as
a list.  Should a server leave ``output_log_probs`` out, each non-empty response counts as one token and
the record says so (``token_source="responses"``).

Plain Python (no numpy needed), so the report and the tests can import it without gevent.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from qwen_triton.serving import contract as c

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """One request as the client saw it.  Times are seconds; ``start_s`` is relative to the run's start."""

    level: int  # concurrency of the level this request belongs to
    protocol: str  # http_stream | grpc_stream | http
    workload: str
    user: int
    session: int
    turn: int
    start_s: float
    input_tokens: int  # the workload's count (exact for text_input, template estimate for messages)
    requested_tokens: int  # max_tokens sent
    forced: bool  # min_length == max_tokens: the reply must have exactly requested_tokens tokens
    ok: bool = False
    cancelled: bool = False  # cut off by the drain timeout at the end of a level: neither ok nor failed
    error: str = ""
    error_kind: str = ""  # http_4xx, http_5xx, server, timeout, connection, protocol, empty
    ttft_s: float | None = None
    latency_s: float | None = None
    itl_s: float | None = None
    max_gap_s: float | None = None  # longest wait between two token-bearing responses (stalls, preemption)
    output_tokens: int = 0
    responses: int = 0
    token_source: str = c.OUTPUT_LOG_PROBS  # or "responses" (see the module docstring)
    reply_chars: int = 0

    def finish(self, t_end: float, t0: float, arrivals: Sequence[tuple[float, int]], streaming: bool) -> None:
        """Fill the timing fields from the arrival times (perf_counter) of token-bearing responses and
        their token counts; t0 is when the request was sent."""
        self.latency_s = t_end - t0
        self.output_tokens = sum(n for _, n in arrivals)
        # when each token arrived, in seconds since the run's start (kept in memory, not written out)
        self.token_times = [(self.start_s + (t - t0), n) for t, n in arrivals]
        if streaming and arrivals:
            self.ttft_s = arrivals[0][0] - t0
            if self.output_tokens > 1:
                self.itl_s = (self.latency_s - self.ttft_s) / (self.output_tokens - 1)
            if len(arrivals) > 1:
                self.max_gap_s = max(b[0] - a[0] for a, b in itertools.pairwise(arrivals))

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord))


def count_tokens(value: Any) -> int | None:
    """Tokens in one response's ``output_log_probs`` as JSON gives it (a number for one token, a list,
    possibly nested, for several) or as a numpy array; None when absent."""
    if value is None:
        return None
    size = getattr(value, "size", None)
    if size is not None and not isinstance(value, (int, float)):
        return int(size)
    if isinstance(value, (list, tuple)):
        return sum(count_tokens(v) or 0 for v in value)
    return 1


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default; None if empty."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def distribution(values: Iterable[float | None]) -> dict[str, float | None]:
    """mean, min, max and p50/p90/p99 of the values that are not None (all None if there are none)."""
    xs = [float(v) for v in values if v is not None]
    out: dict[str, float | None] = {"count": len(xs), "mean": sum(xs) / len(xs) if xs else None,
                                    "min": min(xs) if xs else None, "max": max(xs) if xs else None}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(xs, q)
    return out


@dataclass
class LevelWindow:
    """When a level ran (seconds since the run's start); ``steady_end_s``: when it stopped starting
    requests (the drain began), so [start_s, steady_end_s] is the time all its users were in the loop."""

    start_s: float
    end_s: float
    steady_end_s: float | None = None

    @property
    def duration_s(self) -> float:
        return max(self.end_s - self.start_s, 1e-9)


@dataclass
class Summary:
    requests: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    request_throughput: float = 0.0
    output_token_throughput: float = 0.0
    # output tokens that arrived while every user was in the loop (before the drain), per second of that
    # time: the closed loop's steady rate, unaffected by the tail of the last requests
    steady_output_token_throughput: float | None = None
    steady_duration_s: float | None = None
    input_token_throughput: float = 0.0
    output_tokens: int = 0
    input_tokens: int = 0
    mean_output_tokens: float | None = None
    mean_input_tokens: float | None = None
    length_mismatches: int = 0  # forced-length replies whose counted tokens differ from the request
    ttft_s: dict[str, float | None] = field(default_factory=dict)
    itl_s: dict[str, float | None] = field(default_factory=dict)
    latency_s: dict[str, float | None] = field(default_factory=dict)
    max_gap_s: dict[str, float | None] = field(default_factory=dict)
    # {"1": {"requests", "mean_input_tokens", "ttft_s": distribution}, "2": ...}; {} for one-shot workloads
    ttft_by_turn: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(records: Sequence[RequestRecord], window: LevelWindow | None = None) -> Summary:
    """The serving metrics of a set of requests.  The duration is the window's if given, else from the
    first request's start to the last one's end."""
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok and not r.cancelled]
    if window is None:
        started = [r.start_s for r in records]
        ended = [r.start_s + (r.latency_s or 0.0) for r in records]
        window = LevelWindow(min(started, default=0.0), max(ended, default=0.0))
    duration = window.duration_s
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.input_tokens for r in ok)
    steady_s = steady = None
    if window.steady_end_s is not None and window.steady_end_s > window.start_s:
        steady_s = window.steady_end_s - window.start_s
        steady = sum(n for r in ok for t, n in getattr(r, "token_times", ())
                     if window.start_s <= t <= window.steady_end_s) / steady_s
    return Summary(
        requests=len(records),
        ok=len(ok),
        failed=len(failed),
        cancelled=sum(r.cancelled for r in records),
        errors=dict(Counter(r.error_kind or "other" for r in failed)),
        duration_s=duration,
        request_throughput=len(ok) / duration,
        output_token_throughput=out_tokens / duration,
        steady_output_token_throughput=steady,
        steady_duration_s=steady_s,
        input_token_throughput=in_tokens / duration,
        output_tokens=out_tokens,
        input_tokens=in_tokens,
        mean_output_tokens=out_tokens / len(ok) if ok else None,
        mean_input_tokens=in_tokens / len(ok) if ok else None,
        length_mismatches=sum(1 for r in ok if r.forced and r.output_tokens != r.requested_tokens),
        ttft_s=distribution(r.ttft_s for r in ok),
        itl_s=distribution(r.itl_s for r in ok),
        latency_s=distribution(r.latency_s for r in ok),
        max_gap_s=distribution(r.max_gap_s for r in ok),
        ttft_by_turn=ttft_by_turn(records),
    )


def ttft_by_turn(records: Sequence[RequestRecord]) -> dict[str, dict[str, Any]]:
    """Time to first token per turn of a chat session, over the successful requests: {"<turn>":
    {"requests": n, "mean_input_tokens": x, "ttft_s": distribution}}, turns in order (keys are strings,
    as JSON writes them).  Empty when no request was a session's second turn or later (one-shot
    workloads).  A non-streaming user has no TTFT: its turns count requests, with an empty distribution."""
    if not any(r.turn > 1 for r in records):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for turn in sorted({r.turn for r in records if r.ok}):
        ok = [r for r in records if r.ok and r.turn == turn]
        out[str(turn)] = {"requests": len(ok), "mean_input_tokens": sum(r.input_tokens for r in ok) / len(ok),
                          "ttft_s": distribution(r.ttft_s for r in ok)}
    return out


def flat_summary(summary: Summary | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """One CSV row: nested distributions become ``ttft_ms_p50`` etc. (milliseconds), errors
    ``errors_<kind>``, TTFT by turn ``turn<n>_requests``, ``turn<n>_ttft_ms_p50`` and ``_p90``."""
    d = summary.as_dict() if isinstance(summary, Summary) else dict(summary)
    row: dict[str, Any] = {}
    for key, value in d.items():
        if key == "ttft_by_turn":
            row.update(_flat_turns(value, prefix))
        elif key == "errors":
            for kind, n in sorted(value.items()):
                row[f"{prefix}errors_{kind}"] = n
        elif isinstance(value, dict):
            base = key.removesuffix("_s")
            for stat, v in value.items():
                if stat == "count":
                    continue
                row[f"{prefix}{base}_ms_{stat}"] = None if v is None else round(v * 1000.0, 3)
        else:
            row[f"{prefix}{key}"] = round(value, 4) if isinstance(value, float) else value
    return row


def _flat_turns(turns: dict[str, dict[str, Any]], prefix: str) -> dict[str, Any]:
    """The CSV columns of TTFT by turn: requests and TTFT p50 / p90 (ms) per turn."""
    row: dict[str, Any] = {}
    for turn, entry in turns.items():
        row[f"{prefix}turn{turn}_requests"] = entry.get("requests")
        for stat in ("p50", "p90"):
            v = (entry.get("ttft_s") or {}).get(stat)
            row[f"{prefix}turn{turn}_ttft_ms_{stat}"] = None if v is None else round(v * 1000.0, 3)
    return row

"""The engine's outputs -> the engine model's responses, for one Triton request of B rows.

Shapes follow tensorrtllm_backend: a decoupled model answers each row on its own (batch dimension 1,
`batch_index` says which row), the final flag riding on the last response of the last row; a
streaming row sends only its new tokens, never the prompt; a non-streaming row sends, once, the
prompt (unless exclude_input_in_output) and every generated token. A model that is not decoupled
sends one response for the whole request, rows padded to the longest. Triton-free and torch-free;
everything here runs on the service's sender thread only.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..chat import complete_prefix_len
from ..outputs import RequestMetrics, RequestOutput, TopLogprobs
from . import contract as c
from .engine_request import EngineRequest

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class EngineResponse:
    """One message for a Triton request's response sender.

    arrays: output tensors to send (None: send only the flag). final: this ends the request.
    error / cancelled: the request failed or was cancelled (then arrays is None and final is True).
    """

    arrays: Arrays | None
    final: bool
    error: str | None = None
    cancelled: bool = False


Send = Callable[[EngineResponse], None]


class Utf8TokenReleaser:
    """Holds back tokens whose bytes end inside a UTF-8 character, so that every streamed group of
    tokens decodes to whole characters on its own (an ensemble's postprocessing has no state)."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._token_bytes = token_bytes
        self._held: list[int] = []

    def push(self, token_ids: Sequence[int]) -> list[int]:
        self._held.extend(token_ids)
        k = complete_prefix_len([self._token_bytes(t) for t in self._held])
        ready, self._held = self._held[:k], self._held[k:]
        return ready

    def flush(self) -> list[int]:
        ready, self._held = self._held, []
        return ready


def _col(value, dtype) -> np.ndarray:
    return np.asarray([[value]], dtype=dtype)


def metric_arrays(m: RequestMetrics) -> Arrays:
    """return_perf_metrics outputs ([1, 1] each); no speculative decoding, so its figures are 0."""
    return {c.KV_NEW_BLOCKS: _col(m.kv_new_blocks, np.int32), c.KV_REUSED_BLOCKS: _col(m.kv_reused_blocks, np.int32),
            c.KV_TOTAL_BLOCKS: _col(m.kv_total_blocks, np.int32),
            c.ARRIVAL_TIME: _col(m.arrival_time_ns, np.int64),
            c.FIRST_SCHEDULED_TIME: _col(m.first_scheduled_time_ns, np.int64),
            c.FIRST_TOKEN_TIME: _col(m.first_token_time_ns, np.int64),
            c.LAST_TOKEN_TIME: _col(m.last_token_time_ns, np.int64),
            c.ACCEPTANCE_RATE: _col(0.0, np.float32), c.ACCEPTED_DRAFT_TOKENS: _col(0, np.int32),
            c.DRAFT_TOKENS: _col(0, np.int32)}


class RowState:
    """What one row (one engine sequence) has produced so far."""

    def __init__(self, request: EngineRequest, token_bytes: Callable[[int], bytes]):
        self.request = request
        self.releaser = Utf8TokenReleaser(token_bytes)
        self.generated: list[int] = []       # every token the engine produced, in order
        self.releasable = 0                   # generated[:releasable] end on whole UTF-8 characters
        self.released = 0                     # generated[:released] went out (streaming)
        self.logprobs: list[float] = []
        self.top: TopLogprobs | None = None   # [generated so far, k] when the row asked for top_logprobs
        self.gen_logits: list[np.ndarray] = []  # float32 [n_i, vocab] chunks
        self.context_logits: np.ndarray | None = None  # float32 [prompt, vocab], sent once
        self.metrics: RequestMetrics | None = None

    def absorb(self, out: RequestOutput) -> None:
        self.generated.extend(out.new_token_ids)
        self.logprobs.extend(out.new_logprobs or [])
        self.top = TopLogprobs.join(self.top, out.new_top_logprobs)
        if out.generation_logits is not None:
            self.gen_logits.append(out.generation_logits)
        if out.context_logits is not None:
            self.context_logits = out.context_logits
        if out.metrics is not None:
            self.metrics = out.metrics
        if self.request.streaming:
            self.releasable += len(self.releaser.push(out.new_token_ids))
            if out.finished:
                self.releasable += len(self.releaser.flush())

    def stream_arrays(self, finished: bool) -> Arrays | None:
        """Streaming: the tokens that became releasable since the last response, or None when there
        is nothing to send (at the end, a response still carries logits or metrics not yet sent)."""
        start, stop = self.released, self.releasable
        if start == stop and not (finished and self._has_extras()):
            return None
        self.released = stop
        return self._arrays(self.generated[start:stop], start, stop)

    def final_arrays(self) -> Arrays:
        """Non-streaming: the prompt (unless excluded) and every generated token."""
        prefix = [] if self.request.exclude_input else self.request.prompt
        return self._arrays(prefix + self.generated, 0, len(self.generated))

    def _has_extras(self) -> bool:
        p = self.request.params
        return self.context_logits is not None or (p.return_perf_metrics and self.metrics is not None)

    def _arrays(self, ids: list[int], start: int, stop: int) -> Arrays:
        """Batch-1 outputs for `ids`, whose generated part is tokens [start, stop) of this row."""
        req, params = self.request, self.request.params
        out = {c.OUT_OUTPUT_IDS: np.asarray(ids, dtype=np.int32).reshape(1, 1, -1),
               c.OUT_SEQUENCE_LENGTH: _col(len(ids), np.int32)}
        # as upstream: log probs only when asked, batch_index only for a batch (sequence_index: n is 1)
        if params.logprobs:
            out[c.CUM_LOG_PROBS] = _col(float(np.sum(self.logprobs[:stop])), np.float32)
            out[c.OUTPUT_LOG_PROBS] = np.asarray(self.logprobs[start:stop], np.float32).reshape(1, 1, -1)
        if params.top_logprobs:  # ours: [1 (batch), 1 (beam), tokens, k], as output_log_probs' [1, 1, tokens]
            k = params.top_logprobs
            top = self.top.head(stop) if self.top is not None else TopLogprobs(np.zeros((0, k), np.int32),
                                                                                  np.zeros((0, k), np.float32))
            out[c.OUT_TOP_IDS] = top.token_ids[start:][None, None].astype(np.int32)
            out[c.OUT_TOP_LOGPROBS] = top.logprobs[start:][None, None].astype(np.float32)
        if req.batch_size > 1:
            out[c.BATCH_INDEX] = _col(req.batch_index, np.int32)
        if params.return_generation_logits:
            rows = np.concatenate(self.gen_logits, axis=0) if self.gen_logits else np.zeros((0, 0), np.float32)
            out[c.GENERATION_LOGITS] = rows[start:stop][None, None]
        if self.context_logits is not None:
            out[c.CONTEXT_LOGITS] = self.context_logits[None]
            self.context_logits = None  # once
        if params.return_perf_metrics and self.metrics is not None:
            out.update(metric_arrays(self.metrics))
        return out


def combine(rows: list[Arrays], pad_ids: list[int]) -> Arrays:
    """Batch-1 arrays of B rows -> one set of [B, ...] arrays, each padded to the longest row
    (output_ids with the row's pad id, everything else with 0)."""
    out: Arrays = {}
    for name in dict.fromkeys(k for row in rows for k in row):
        present = [row[name] for row in rows if name in row]
        ndim, dtype = present[0].ndim, present[0].dtype
        shape = [max(a.shape[d] for a in present) for d in range(ndim)]
        parts = []
        for row, pad in zip(rows, pad_ids):
            a = row.get(name, np.zeros([1] + [0] * (ndim - 1), dtype))
            width = [(0, 0)] + [(0, shape[d] - a.shape[d]) for d in range(1, ndim)]
            parts.append(np.pad(a, width, constant_values=pad if name == c.OUT_OUTPUT_IDS else 0))
        out[name] = np.concatenate(parts, axis=0)
    return out


class CallState:
    """One Triton request of the engine model: its rows, and what has been sent for it."""

    def __init__(self, requests: list[EngineRequest], send: Send, decoupled: bool,
                 token_bytes: Callable[[int], bytes]):
        self.rows = [RowState(r, token_bytes) for r in requests]
        self.send = send
        self.decoupled = decoupled
        self.stopped = False  # a `stop` request ended it: finish normally, not as cancelled
        self.done = False     # the final response went out
        self._remaining = len(requests)

    def handle(self, index: int, out: RequestOutput) -> bool:
        """Apply one engine output of row `index`; True when the request failed or was cancelled
        (the caller aborts its other rows)."""
        if self.done:
            return False
        if out.finished and (out.finish_reason == "error" or (out.finish_reason == "abort" and not self.stopped)):
            cancelled = out.finish_reason == "abort"
            self._end(EngineResponse(None, True, error=None if cancelled else out.error or "engine error",
                                     cancelled=cancelled))
            return True
        row = self.rows[index]
        row.absorb(out)
        if out.finished:
            self._remaining -= 1
        if not self.decoupled:
            if not self._remaining:
                self._end(EngineResponse(combine([r.final_arrays() for r in self.rows],
                                                 [r.request.pad_id for r in self.rows]), True))
            return False
        if row.request.streaming:
            arrays = row.stream_arrays(out.finished)
        else:
            arrays = row.final_arrays() if out.finished else None
        if not self._remaining:
            self._end(EngineResponse(arrays, True))
        elif arrays is not None:
            self.send(EngineResponse(arrays, False))
        return False

    def _end(self, response: EngineResponse) -> None:
        self.done = True
        self.send(response)

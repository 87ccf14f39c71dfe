"""The engine behind the Triton engine model, without Triton.

`model_repo/tensorrt_llm/1/model.py` turns each Triton request into a call of
`EngineService.submit` with numpy inputs and a `send` callback, and polls
cancellation. Everything else (parsing, batching, streaming in whole UTF-8
characters, one final response per request) happens here, where tests reach it
without a server.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..background import BackgroundEngine
from ..chat import Tokenizer, load_tokenizer
from ..config import EngineConfig
from ..engine import LLMEngine
from ..outputs import EngineStats, RequestOutput
from .engine_io import (
    Arrays,
    EngineRequest,
    ResponseAccumulator,
    Utf8TokenReleaser,
    parse_engine_request,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineResponse:
    """One message for a request's Triton response sender.

    arrays: output tensors to send (None: send only the flag). final: this
    ends the request. error / cancelled: the request failed or was cancelled
    (then arrays is None and final is True).
    """

    arrays: dict[str, np.ndarray] | None
    final: bool
    error: str | None = None
    cancelled: bool = False


Send = Callable[[EngineResponse], None]


class _Live:
    """Per-request state, touched only by the service's sender thread."""

    def __init__(self, request: EngineRequest, token_bytes: Callable[[int], bytes], send: Send):
        self.request = request
        self.releaser = Utf8TokenReleaser(token_bytes)
        self.acc = ResponseAccumulator(request)
        self.send = send

    def handle(self, out: RequestOutput) -> None:
        if out.finished and out.finish_reason == "error":
            self.send(EngineResponse(None, True, error=out.error or "engine error"))
        elif out.finished and out.finish_reason == "abort":
            self.send(EngineResponse(None, True, cancelled=True))
        elif self.request.streaming:
            self._stream(out)
        else:
            self.acc.tokens.extend(out.new_token_ids)
            self.acc.logprobs.extend(out.new_logprobs or [])
            if out.finished:
                self.send(EngineResponse(self.acc.final_arrays(), True))

    def _stream(self, out: RequestOutput) -> None:
        ready = self.releaser.push(out.new_token_ids)
        self.acc.logprobs.extend(out.new_logprobs or [])
        if out.finished:
            ready += self.releaser.flush()
        if ready:
            n = len(self.acc.tokens)
            self.acc.tokens.extend(ready)
            lps = self.acc.logprobs[n:n + len(ready)] if self.acc.logprobs else []
            self.send(EngineResponse(self.acc.arrays(ready, lps), out.finished))
        elif out.finished:
            self.send(EngineResponse(None, True))


class EngineService:
    """One engine (one Triton model instance): submit, cancel, stats, shutdown."""

    def __init__(self, model_path: str, engine_config: EngineConfig, tokenizer_dir: str | None = None,
                 exclude_input_default: bool = True, tokenizer: Tokenizer | None = None):
        self.tokenizer = tokenizer or load_tokenizer(tokenizer_dir or model_path)
        self.defaults = self.tokenizer.generation_defaults
        self.exclude_input_default = exclude_input_default
        self.engine = BackgroundEngine(LLMEngine(model_path, engine_config))
        self._token_bytes = self.tokenizer.token_bytes_table()
        self._outbox: queue.Queue[tuple[_Live, RequestOutput] | None] = queue.Queue()
        # responses are built and sent off the engine thread, so the step loop never waits on clients
        self._sender = threading.Thread(target=self._send_loop, name="qwen-triton-sender", daemon=True)
        self._sender.start()

    def end_ids_of(self, end_id: int | None) -> tuple[int, ...]:
        eos = tuple(self.tokenizer.eos_ids)
        if end_id is None:
            return eos
        return (end_id,) + tuple(e for e in eos if e != end_id) if end_id in eos else (end_id,)

    def parse(self, inputs: Arrays) -> EngineRequest:
        """Raise InvalidRequestError for bad input; nothing is queued."""
        return parse_engine_request(inputs, self.end_ids_of, self.defaults, self.exclude_input_default)

    def submit(self, request_id: str, inputs: Arrays, send: Send) -> None:
        """Queue a request; `send` receives its responses from another thread.
        Bad input raises InvalidRequestError here and queues nothing."""
        request = self.parse(inputs)
        live = _Live(request, self._bytes_of, send)
        self.engine.submit(request_id, request.prompt, request.params,
                           on_output=lambda out: self._outbox.put((live, out)))

    def cancel(self, request_id: str) -> None:
        self.engine.abort(request_id)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def shutdown(self) -> None:
        self.engine.shutdown()
        self._outbox.put(None)
        self._sender.join(timeout=10)

    def _bytes_of(self, token_id: int) -> bytes:
        table = self._token_bytes
        return table[token_id] if 0 <= token_id < len(table) else b""

    def _send_loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            for live, out in coalesce(batch):
                try:
                    live.handle(out)
                except Exception:  # a broken client connection must not stop other requests' responses
                    log.exception("sending a response for %s failed", out.request_id)
                    if not out.finished:
                        self.engine.abort(out.request_id)

    def _next_batch(self) -> list[tuple[_Live, RequestOutput]] | None:
        """Wait for one output, then take every output already queued (None: shut down)."""
        first = self._outbox.get()
        if first is None:
            return None
        batch = [first]
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return batch
            if item is None:
                self._outbox.put(None)  # shut down after this batch
                return batch
            batch.append(item)


def coalesce(batch: list[tuple[_Live, RequestOutput]]) -> list[tuple[_Live, RequestOutput]]:
    """Merge each request's queued outputs into one, in order: when sending falls behind the
    engine (many streams at once), every request gets one response carrying all its new tokens
    instead of one response per token. With nothing queued this is the identity."""
    merged: dict[int, tuple[_Live, RequestOutput]] = {}
    for live, out in batch:
        key = id(live)
        if key not in merged:
            merged[key] = (live, out)
            continue
        prev = merged[key][1]
        logprobs = None if prev.new_logprobs is None and out.new_logprobs is None else \
            (prev.new_logprobs or []) + (out.new_logprobs or [])
        merged[key] = (live, replace(out, new_token_ids=prev.new_token_ids + out.new_token_ids,
                                     new_logprobs=logprobs))
    return list(merged.values())

"""The engine behind the Triton engine model, without Triton.

`model_repo/tensorrt_llm/1/model.py` turns each Triton request into a call of `EngineService.submit`
with numpy inputs, a `send` callback and the request's `is_cancelled`. Everything else happens here,
where tests reach it without a server: parsing (engine_request), one engine sequence per batch row,
responses shaped as tensorrtllm_backend's (engine_response), `stop` requests, and cancellation.

The engine link (link_server.py) calls the same `submit`, `stop` and `cancel` for our entry models, one
caller per connection; `drop_caller` ends a closed connection's requests.

Threads: the engine's step loop (BackgroundEngine), one sender per caller (send_lanes: builds and sends
responses, so the step loop never waits on clients, and a caller that stopped reading holds up only its
own) and the poller here (every `poll_period_s`: cancelled requests are aborted, then `on_poll` runs, e.g.
to export metrics). `_calls` (request key -> _Live) is the service's one table of live requests, under
`_lock`.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..background import BackgroundEngine
from ..chat import Tokenizer, load_tokenizer
from ..config import EngineConfig
from ..engine import LLMEngine
from ..errors import InvalidRequestError
from ..outputs import EngineStats, RequestOutput, TopLogprobs
from .engine_metrics import LatencyRecorder
from .engine_request import EngineRequest, ParseOptions, parse_engine_request
from .engine_response import CallState, Send
from .send_lanes import SendLanes
from .triton_io import Arrays, CancelGuard

log = logging.getLogger(__name__)


@dataclass
class _Live:
    """A Triton request in flight: its state, who sent it, and its cancellation checks (CancelGuard)."""

    client_id: str
    guard: CancelGuard
    caller: int = 0  # its sender lane (send_lanes): an engine link connection, 0 for Triton's clients
    call: CallState | None = None
    engine_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ServiceOptions:
    exclude_input_default: bool = False  # tensorrtllm_backend's default
    decoupled: bool = True
    poll_period_s: float = 0.1


class EngineService:
    """One engine (one Triton model instance): submit, stop, cancel, stats, shutdown."""

    def __init__(self, model_path: str, engine_config: EngineConfig, tokenizer_dir: str | None = None,
                 options: ServiceOptions = ServiceOptions(), tokenizer: Tokenizer | None = None,
                 on_poll: Callable[[], None] | None = None):
        self.tokenizer = tokenizer or load_tokenizer(tokenizer_dir or model_path)
        self.options = options
        self.parse_options = ParseOptions(self.end_ids_of, self.tokenizer.generation_defaults,
                                          options.exclude_input_default, options.decoupled)
        self.engine = BackgroundEngine(LLMEngine(model_path, engine_config, tokenizer=self.tokenizer))
        self._token_bytes = self.tokenizer.token_bytes_table()
        self._lock = threading.Lock()
        self._calls: dict[str, _Live] = {}
        self.rejected = 0  # requests refused before the engine (bad input)
        self.latency = LatencyRecorder()  # time to first token, inter-token latency (engine_metrics.py)
        self._lanes = SendLanes(self._send_batch)
        self._stopping = threading.Event()
        self._on_poll = on_poll
        self._poller = threading.Thread(target=self._poll_loop, name="qwen-triton-poll", daemon=True)
        self._poller.start()

    def end_ids_of(self, end_id: int | None) -> tuple[int, ...]:
        eos = tuple(self.tokenizer.eos_ids)
        if end_id is None:
            return eos
        return (end_id,) + tuple(e for e in eos if e != end_id) if end_id in eos else (end_id,)

    def parse(self, inputs: Arrays) -> list[EngineRequest]:
        """Raise InvalidRequestError for bad input; nothing is queued."""
        requests = parse_engine_request(inputs, self.parse_options)
        for r in requests:
            self.engine.engine.validate(r.prompt, r.params)
        return requests

    def submit(self, key: str, inputs: Arrays, send: Send, client_id: str = "",
               is_cancelled: Callable[[], bool] | None = None, accepted: Callable[[], None] | None = None,
               caller: int = 0) -> None:
        """Queue a request (every batch row); `send` receives its responses from the sender thread of
        `caller` (send_lanes). Bad input raises InvalidRequestError here and queues
        nothing; `accepted` runs once the input is known good, before any response can be sent."""
        try:
            requests = self.parse(inputs)
        except InvalidRequestError:
            self.rejected += 1
            raise
        live = _Live(client_id, CancelGuard(is_cancelled), caller)
        live.call = CallState(requests, lambda response: self._deliver(key, live, send, response),
                              self.options.decoupled, self._bytes_of)
        with self._lock:
            if key in self._calls:
                raise InvalidRequestError("request_id", f"{key!r} is already in flight")
            self._calls[key] = live
        if accepted is not None:
            accepted()
        try:
            for i, r in enumerate(requests):
                engine_id = f"{key}#{i}"
                self.latency.start(engine_id)
                self.engine.submit(engine_id, r.prompt, r.params,
                                   on_output=lambda out, i=i, e=engine_id: self._on_output(live, i, e, out))
                live.engine_ids.append(engine_id)
        except Exception:
            live.call.done = True  # nothing is sent for the rows already queued: the caller answers
            self._abort(live)
            with self._lock:
                self._calls.pop(key, None)
            raise

    def stop(self, client_id: str) -> int:
        """tensorrtllm_backend's `stop`: end every live request sent under this client id; each
        ends with a normal final response holding what it generated. Returns how many."""
        with self._lock:
            targets = [live for live in self._calls.values() if live.client_id == client_id]
        for live in targets:
            live.call.stopped = True
            self._abort(live)
        return len(targets)

    def cancel(self, key: str) -> None:
        """The client went away: abort the request; it ends with a CANCELLED error."""
        with self._lock:
            live = self._calls.get(key)
        if live is not None:
            self._abort(live)

    def new_caller(self) -> int:
        """A new caller (its own sender lane) for `submit`: one per engine link connection."""
        return self._lanes.new_caller()

    def drop_caller(self, caller: int) -> int:
        """The caller went away (its link connection closed): its lane is closed and its requests are
        aborted, as nobody will read their responses. Returns how many."""
        self._lanes.close(caller)
        with self._lock:
            lost = [self._calls.pop(k) for k, v in list(self._calls.items()) if v.caller == caller]
        for live in lost:
            self._abort(live)
        if lost:
            log.warning("caller %d went away: %d of its requests aborted", caller, len(lost))
        return len(lost)

    def live_count(self) -> int:
        with self._lock:
            return len(self._calls)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def shutdown(self) -> None:
        self._stopping.set()
        self.engine.shutdown()
        self.engine.engine.close()  # tensor parallel: the other ranks' processes
        self._lanes.shutdown()
        self._poller.join(timeout=10)

    # -- internals -----------------------------------------------------------------------------------

    def _on_output(self, live: _Live, index: int, engine_id: str, out: RequestOutput) -> None:
        """The step thread's callback: time the tokens, then queue the output on the caller's lane."""
        self.latency.observe(engine_id, out)
        self._lanes.put(live.caller, (live, index, out))

    def _deliver(self, key: str, live: _Live, send: Send, response) -> None:
        """`send`; the final response also ends the request's cancellation checks and its entry in _calls."""
        if not response.final:
            send(response)
            return
        with self._lock:
            self._calls.pop(key, None)
        live.guard.finish(lambda: send(response))

    def _abort(self, live: _Live) -> None:
        for engine_id in live.engine_ids:
            self.engine.abort(engine_id)

    def _bytes_of(self, token_id: int) -> bytes:
        table = self._token_bytes
        return table[token_id] if 0 <= token_id < len(table) else b""

    def _send_batch(self, batch: list[tuple[_Live, int, RequestOutput]]) -> None:
        """Send one lane's queued outputs (send_lanes), each row's merged into one response."""
        for live, index, out in coalesce(batch):
            try:
                if live.call.handle(index, out):
                    self._abort(live)  # one row failed or was cancelled: the others go too
            except Exception:  # a broken client connection must not stop other requests' responses
                log.exception("sending a response for %s failed", out.request_id)
                self._abort(live)

    def _poll_loop(self) -> None:
        while not self._stopping.wait(self.options.poll_period_s):
            with self._lock:
                watched = list(self._calls.values())
            for live in watched:
                try:
                    if live.guard.check():
                        self._abort(live)
                except Exception:  # the request object is gone: nothing left to watch
                    log.debug("cancellation check failed", exc_info=True)
            if self._on_poll is not None:
                try:
                    self._on_poll()
                except Exception:
                    log.exception("periodic hook failed")


def coalesce(batch: list[tuple[_Live, int, RequestOutput]]) -> list[tuple[_Live, int, RequestOutput]]:
    """Merge each row's queued outputs into one, in order: when sending falls behind the engine
    (many streams at once), every row gets one response carrying all its new tokens instead of one
    response per token. With nothing queued this is the identity."""
    merged: dict[tuple[int, int], tuple[_Live, int, RequestOutput]] = {}
    for live, index, out in batch:
        key = (id(live), index)
        prev = merged.get(key)
        merged[key] = (live, index, out if prev is None else merge_outputs(prev[2], out))
    return list(merged.values())


def merge_outputs(prev: RequestOutput, out: RequestOutput) -> RequestOutput:
    """Two consecutive outputs of one request as one (token deltas and their extras joined)."""
    logprobs = None if prev.new_logprobs is None and out.new_logprobs is None else \
        (prev.new_logprobs or []) + (out.new_logprobs or [])
    gen = [g for g in (prev.generation_logits, out.generation_logits) if g is not None]
    return replace(out, new_token_ids=prev.new_token_ids + out.new_token_ids, new_logprobs=logprobs,
                   new_top_logprobs=TopLogprobs.join(prev.new_top_logprobs, out.new_top_logprobs),
                   generation_logits=np.concatenate(gen, axis=0) if gen else None,
                   context_logits=out.context_logits if out.context_logits is not None else prev.context_logits)

"""Runs an LLMEngine's step loop on a background thread and streams each
request's tokens to its consumer, from any number of threads at once.

The engine itself stays single-threaded: other threads only put commands in an
inbox, which the loop applies between steps.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from .engine import LLMEngine
from .errors import DuplicateRequestError, EngineDeadError, QwenTritonError
from .outputs import EngineStats, RequestOutput
from .sampling_params import SamplingParams

log = logging.getLogger(__name__)

OutputCallback = Callable[[RequestOutput], None]


class RequestStream:
    """The outputs of one request, in order; iteration ends after the final one."""

    def __init__(self, request_id: str, abort: Callable[[str], None]):
        self.request_id = request_id
        self._abort = abort
        self._queue: queue.Queue[RequestOutput] = queue.Queue()

    def put(self, out: RequestOutput) -> None:
        self._queue.put(out)

    def get(self, timeout: float | None = None) -> RequestOutput:
        """Next output; raises queue.Empty after `timeout` seconds."""
        return self._queue.get(timeout=timeout)

    def __iter__(self) -> Iterator[RequestOutput]:
        while True:
            out = self._queue.get()
            yield out
            if out.finished:
                return

    def cancel(self) -> None:
        """Abort the request; a final output with finish_reason "abort" follows."""
        self._abort(self.request_id)

    def result(self, timeout: float | None = None) -> tuple[list[int], RequestOutput]:
        """Wait for the end; return all output tokens and the final output."""
        tokens: list[int] = []
        while True:
            out = self.get(timeout)
            tokens.extend(out.new_token_ids)
            if out.finished:
                return tokens, out


@dataclass(frozen=True)
class _Add:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    deliver: OutputCallback
    arrival_time_ns: int  # when submit() accepted it (perf metrics date requests from here)


@dataclass(frozen=True)
class _Abort:
    request_id: str


class BackgroundEngine:
    """Thread-safe front of an engine whose step loop runs on its own thread."""

    def __init__(self, engine: LLMEngine, name: str = "qwen-triton-engine"):
        self.engine = engine
        self._inbox: queue.Queue[_Add | _Abort | None] = queue.Queue()
        self._lock = threading.Lock()
        self._live: dict[str, OutputCallback] = {}  # request id -> delivery, owned under _lock
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- any thread ----------------------------------------------------------

    def submit(self, request_id: str, prompt_token_ids: Seq[int], params: SamplingParams,
               on_output: OutputCallback | None = None) -> RequestStream:
        """Queue a request. Bad input raises InvalidRequestError here, in the
        caller's thread. Outputs go to the returned stream, or, when given, to
        `on_output` instead (called on the engine thread: keep it quick)."""
        stream = RequestStream(request_id, self.abort)
        deliver = on_output or stream.put
        prompt = list(prompt_token_ids)
        self.engine.validate(prompt, params)
        with self._lock:
            if self._closed:
                raise EngineDeadError("the engine is shut down")
            if request_id in self._live:
                raise DuplicateRequestError(request_id)
            self._live[request_id] = deliver
        self._inbox.put(_Add(request_id, prompt, params, deliver, time.time_ns()))
        return stream

    def abort(self, request_id: str) -> None:
        """Cancel a request; its blocks are freed before the next step."""
        self._inbox.put(_Abort(request_id))

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort everything in flight and stop the loop."""
        with self._lock:
            self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout)

    # -- the engine thread ---------------------------------------------------

    def _run(self) -> None:
        try:
            while self._apply_commands(block=not self.engine.has_unfinished_requests()):
                self._deliver(self.engine.step())
        except Exception as exc:  # a bug in the loop itself: fail everyone, loudly
            log.exception("engine loop died")
            self._fail_all(f"engine loop died: {type(exc).__name__}: {exc}")
            return
        self._fail_all("the engine was shut down", reason="abort")

    def _apply_commands(self, block: bool) -> bool:
        """Apply queued adds and aborts; False once shutdown was asked for."""
        try:
            cmd = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while cmd is not None:
            self._apply(cmd)
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return True
        return False

    def _apply(self, cmd: _Add | _Abort) -> None:
        if isinstance(cmd, _Abort):
            self.engine.abort_request(cmd.request_id)
            return
        try:
            self.engine.add_request(cmd.request_id, cmd.prompt, cmd.params, arrival_time_ns=cmd.arrival_time_ns)
        except QwenTritonError as exc:  # e.g. a race on the id: that request alone fails
            self._deliver([RequestOutput(cmd.request_id, [], None, True, "error", len(cmd.prompt), 0,
                                         str(exc))], deliver=cmd.deliver)

    def _deliver(self, outputs: list[RequestOutput], deliver: OutputCallback | None = None) -> None:
        for out in outputs:
            with self._lock:
                target = deliver or self._live.get(out.request_id)
                if out.finished:
                    self._live.pop(out.request_id, None)
            if target is None:
                continue
            try:
                target(out)
            except Exception:  # a consumer that fails (gone client) loses its request only
                log.exception("output consumer of %s failed; aborting it", out.request_id)
                if not out.finished:
                    self.engine.abort_request(out.request_id)

    def _fail_all(self, message: str, reason: str = "error") -> None:
        with self._lock:
            live, self._live = self._live, {}
            self._closed = True
        for rid, deliver in live.items():
            try:
                deliver(RequestOutput(rid, [], None, True, reason, 0, 0, message))
            except Exception:
                log.exception("output consumer of %s failed", rid)

"""The Triton side of the entry models `ensemble` and `tensorrt_llm_bls` (Python backend).

Both serve upstream's client interface (their own input tables in the contract) with the same code:
each request is planned (qwen_triton.serving.bls), sent to the engine (engine_calls.py: our engine over
the engine link, the TensorRT-LLM engine over BLS), and its engine responses turned into text as they
come. A poller watches every live request; when a client cancels or disconnects, it sends the engine a
`stop` for that request's id, so the engine frees its KV blocks within a step, and the request ends with a
CANCELLED error.

Requests are served on a bounded thread pool (the engine batches them inflight); responses go out through
each request's response sender, one per request when the model is not decoupled.
Imported only by the model.py files, which hand in Triton's `triton_python_backend_utils`.
"""
from __future__ import annotations

import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass

from ..errors import QwenTritonError
from . import bls
from . import contract as c
from .engine_calls import BlsEngine, Failure, LinkEngine
from .engine_watch import EngineWatch, announce_process, release_pid_file, run_dir
from .link_client import LinkClient
from .preprocess import Preprocessor
from .triton_io import CancelGuard, as_bool, error_code, model_parameters, read_inputs, resolve_path, triton_error

log = logging.getLogger(__name__)


@dataclass
class _Live:
    """A request being served: its sender, and its cancellation checks (CancelGuard)."""

    sender: object  # the request's response sender
    guard: CancelGuard
    cancelled: bool = False

    def check_cancelled(self) -> bool:
        """True the first time the client is found to have cancelled (never after the end)."""
        if self.cancelled or not self.guard.check():
            return False
        self.cancelled = True
        return True

    def send(self, response=None, final: int = 0) -> None:
        """Send a response; `final` (the FINAL flag value, else 0) also ends the request."""
        if not final:
            self.sender.send(response)
        elif response is None:
            self.guard.finish(lambda: self.sender.send(flags=final))
        else:
            self.guard.finish(lambda: self.sender.send(response, flags=final))


class EntryModel:
    """One instance of an entry model; `pb` is triton_python_backend_utils."""

    def __init__(self, pb, args: dict):
        self.pb = pb
        params = model_parameters(args)
        self.name = args["model_name"]
        self.specs = c.MODEL_SPECS[self.name][0]
        self.pre = Preprocessor.from_parameters(params, lambda p: resolve_path(p, args))
        self.skip_special = as_bool(params.get(c.PARAM_SKIP_SPECIAL), True)
        self.engine_model = params.get(c.PARAM_ENGINE_MODEL) or c.ENGINE
        self.decoupled = pb.using_decoupled_model_transaction_policy(json.loads(args["model_config"]))
        directory = run_dir(args["model_repository"])
        self.engine = LinkEngine(LinkClient(directory, self.engine_model, self.name)) \
            if as_bool(params.get(c.PARAM_ENGINE_LINK), False) else BlsEngine(pb, self.engine_model, self.decoupled)
        self.pool = ThreadPoolExecutor(int(params.get(c.PARAM_MAX_REQUESTS) or 512), thread_name_prefix=self.name)
        self.lock = threading.Lock()
        self.live: dict[str, _Live] = {}  # engine request id -> the client's request
        self.stopping = threading.Event()
        self.period_s = int(params.get(c.PARAM_CANCEL_PERIOD_MS) or 100) / 1000.0
        self.engine_watch = EngineWatch(directory, self.engine_model)
        # two threads: a cancellation check is an IPC call that can wait on Triton; the engine's death must
        # be seen even then
        for target, what in ((self._poll, "poll"), (self._watch_engine, "engine-watch")):
            threading.Thread(target=target, name=f"{self.name}-{what}", daemon=True).start()
        self.pid_file = announce_process(args)  # the supervisor reloads this model if its process dies

    def execute(self, requests) -> None:
        for request in requests:
            self.pool.submit(self._serve, request)

    def finalize(self) -> None:
        self.stopping.set()
        release_pid_file(self.pid_file)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.engine.close()

    # -- one request ---------------------------------------------------------------------------------

    def _serve(self, request) -> None:
        live = _Live(request.get_response_sender(), CancelGuard(request.is_cancelled))
        rid = f"{self.name}-{uuid.uuid4().hex}"
        if self.engine_watch.down:
            self._fail(live, f"{self.engine_watch.down}; it is being restarted, try again shortly", "UNAVAILABLE")
            return
        try:
            inputs = read_inputs(self.specs, lambda n: self.pb.get_input_tensor_by_name(request, n))
            plan = bls.plan(self.pre, self.specs, inputs)
            with self.lock:
                self.live[rid] = live
            self._run(live, rid, plan)
        except QwenTritonError as exc:
            self._fail(live, str(exc), error_code(exc))
        except Exception as exc:  # never crash the model on a request
            log.exception("%s failed", self.name)
            self._fail(live, f"{self.name} failed: {exc}", "INTERNAL")
        finally:
            with self.lock:
                self.live.pop(rid, None)

    def _run(self, live: _Live, rid: str, plan: bls.EnginePlan) -> None:
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        decoder = bls.ResponseDecoder(self.pre.tokenizer, plan.batch, self.skip_special)
        rows_done = 0
        with closing(self.engine.responses(rid, plan.inputs)) as responses:
            for outputs in responses:
                if live.cancelled:
                    continue  # drain what the engine still sends after the stop
                if isinstance(outputs, Failure):
                    live.send(self.pb.InferenceResponse(error=self._error(outputs)), final)
                    return
                if not outputs:
                    continue  # the engine's flag-only final
                part = decoder.push(outputs, plan.streaming)
                rows_done += len(part[c.TEXT_OUTPUT])
                last = not self.decoupled or (not plan.streaming and rows_done >= plan.batch)
                live.send(self._response(part), final if last else 0)
                if last:
                    return
        if live.cancelled:
            live.send(self.pb.InferenceResponse(error=triton_error(self.pb, "request cancelled", "CANCELLED")), final)
            return
        tails = decoder.finish(plan.logprobs)
        for i, tail in enumerate(tails):
            live.send(self._response(tail), final if i == len(tails) - 1 else 0)
        if not tails:
            live.send(None, final)

    def _response(self, arrays: dict):
        return self.pb.InferenceResponse([self.pb.Tensor(k, v) for k, v in arrays.items()])

    def _error(self, failure: Failure):
        return failure.triton_error or triton_error(self.pb, failure.message, failure.code)

    def _fail(self, live: _Live, message: str, code: str) -> None:
        try:
            live.send(self.pb.InferenceResponse(error=triton_error(self.pb, message, code)),
                      self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception:  # the response already went out: nothing more to say
            log.exception("%s: could not send the error %r", self.name, message)

    # -- cancellation ----------------------------------------------------------------------------------

    def _watch_engine(self) -> None:
        """Every period: when the engine process has died, every live request fails at once (none would
        ever end: Triton 2.51 never answers what a dead stub was serving) and is forgotten."""
        while not self.stopping.wait(self.period_s):
            died = self.engine_watch.poll()
            if not died:
                continue
            with self.lock:
                lost, self.live = list(self.live.values()), {}
            log.error("%s: %s; failing %d requests in flight", self.name, died, len(lost))
            for live in lost:
                live.cancelled = True  # its serving thread only drains from now on
                self._fail(live, f"{died} while serving this request", "UNAVAILABLE")

    def _poll(self) -> None:
        """Every period: a live request whose client cancelled or went away gets its engine request stopped."""
        while not self.stopping.wait(self.period_s):
            with self.lock:
                watched = list(self.live.items())
            for rid, live in watched:
                try:
                    if live.check_cancelled():
                        self._stop(rid)
                except Exception:
                    log.exception("%s: stopping %s failed", self.name, rid)

    def _stop(self, rid: str) -> None:
        self.engine.stop(rid)


def triton_model(pb) -> type:
    """The TritonPythonModel class of an entry model, for its model.py: `triton_model(pb_utils)`."""

    class TritonPythonModel:
        def initialize(self, args):
            self.model = EntryModel(pb, args)

        def execute(self, requests):
            return self.model.execute(requests)

        def finalize(self):
            self.model.finalize()

    return TritonPythonModel

"""The soak test's clients (``python -m loadtest.soak``): one request over one protocol, with an optional
cancellation and a deadline, reduced to an :class:`Outcome`.

Protocols: ``http`` (``POST /generate``, one JSON reply), ``sse`` (``POST /generate_stream``, Server-Sent
Events; cancelled by closing the connection), ``grpc_stream`` (a tritonclient gRPC stream with
``stream=true``, one response per chunk; cancelled with ``stop_stream(cancel_requests=True)``) and ``grpc``
(the same stream with ``stream=false``: the entry models are decoupled, so gRPC has no unary path to them).

Plain threads: every call makes its own connection (a gRPC client per request), so calls run in parallel
from any thread.  No state outside the objects.
"""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import requests

from qwen_triton import wire
from qwen_triton.serving import contract as c

PROTOCOLS = ("http", "sse", "grpc_stream", "grpc")
STREAMING = ("sse", "grpc_stream")  # the protocols a request can be cancelled on
_SPECS = MappingProxyType({model: MappingProxyType({s.name: s for s in specs}) for model, specs in
                           ((c.ENSEMBLE, c.ENSEMBLE_INPUTS), (c.BLS, c.BLS_INPUTS))})


@dataclass(frozen=True)
class Cancel:
    """When to cancel a streamed request: after this many chunks, or at the first chunk after ``after_ms``."""

    after_chunks: int | None = None
    after_ms: float | None = None

    def due(self, chunks: int, elapsed_s: float) -> bool:
        """Whether the request is to be cancelled now."""
        return ((self.after_chunks is not None and chunks >= self.after_chunks)
                or (self.after_ms is not None and elapsed_s * 1000 >= self.after_ms))


@dataclass
class Outcome:
    """How one request ended. ``result``: ok | error | cancelled (by us) | hang (no end by the deadline).
    ``status``: the HTTP status (None over gRPC); ``error``: the server's message."""

    result: str
    status: int | None = None
    text: str = ""
    chunks: int = 0
    error: str = ""
    started: float = 0.0  # time.monotonic() at the start
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class SoakClient:
    """Sends requests to one server. ``timeout_s``: a request that has not ended by then is a hang."""

    def __init__(self, http_url: str, grpc_url: str, timeout_s: float = 60.0):
        self.http_url = http_url.rstrip("/")
        self.grpc_url = grpc_url
        self.timeout_s = timeout_s

    def send(self, protocol: str, model: str, body: dict[str, Any], cancel: Cancel | None = None) -> Outcome:
        """One well-formed request (``body``: the JSON fields of the generate extension)."""
        started = time.monotonic()
        if protocol in ("http", "sse"):
            payload = {**body, c.STREAM: True} if protocol == "sse" else body
            out = self.http(model, payload, protocol == "sse", cancel)
        else:
            inputs = body_inputs(model, {**body, c.STREAM: protocol == "grpc_stream"})
            out = self.grpc(model, inputs, cancel)
        out.started, out.seconds = started, time.monotonic() - started
        return out

    # ------------------------------------------------------------------------------------------- HTTP
    def http(self, model: str, body: dict[str, Any] | bytes, stream: bool, cancel: Cancel | None = None) -> Outcome:
        """POST a JSON body (a dict, or bytes as they are) to /generate or /generate_stream."""
        url = self.http_url + wire.generate_path(model, stream=stream)
        data = body if isinstance(body, bytes) else None
        started = time.monotonic()
        try:
            r = requests.post(url, data=data, json=None if data is not None else body, stream=stream,
                              headers={"Content-Type": "application/json"}, timeout=(10, self.timeout_s))
        except requests.Timeout:
            return Outcome("hang", error=f"no answer in {self.timeout_s:.0f} s")
        except requests.RequestException as exc:
            return Outcome("error", error=f"connection: {exc}")
        with r:
            if r.status_code != 200:
                return Outcome("error", status=r.status_code, error=wire.error_message(r.content))
            if not stream:
                return _json_reply(r)
            return self._events(r, started, cancel)

    def _events(self, r: requests.Response, started: float, cancel: Cancel | None) -> Outcome:
        """Read an SSE reply to its end, an error event, a cancellation (close) or the deadline."""
        parts: list[str] = []
        try:
            for event in wire.parse_sse(r.iter_lines(decode_unicode=False)):
                if "error" in event:
                    return Outcome("error", status=r.status_code, text="".join(parts), chunks=len(parts),
                                   error=str(event["error"]))
                parts.append(str(event.get(c.TEXT_OUTPUT, "")))
                elapsed = time.monotonic() - started
                if cancel is not None and cancel.due(len(parts), elapsed):
                    r.close()  # dropping the connection is the cancellation
                    return Outcome("cancelled", status=200, text="".join(parts), chunks=len(parts))
                if elapsed > self.timeout_s:
                    return Outcome("hang", status=200, text="".join(parts), chunks=len(parts),
                                   error=f"stream still open after {self.timeout_s:.0f} s")
        except requests.Timeout:
            return Outcome("hang", status=200, chunks=len(parts), error="stream stalled")
        except (requests.RequestException, wire.WireError) as exc:
            return Outcome("error", status=200, chunks=len(parts), error=f"stream broke: {exc}")
        return Outcome("ok", status=200, text="".join(parts), chunks=len(parts))

    # ------------------------------------------------------------------------------------------- gRPC
    def grpc(self, model: str, inputs: list[tuple[str, np.ndarray]], cancel: Cancel | None = None) -> Outcome:
        """One request on a tritonclient gRPC stream; the chunks of text_output joined."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        events: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            client.start_stream(callback=lambda result, error: events.put((result, error)))
            infer_inputs = []
            for name, arr in inputs:
                t = grpcclient.InferInput(name, list(arr.shape), wire.triton_dtype(arr.dtype))
                t.set_data_from_numpy(arr)
                infer_inputs.append(t)
            client.async_stream_infer(model, infer_inputs, enable_empty_final_response=True)
            return self._responses(client, events, cancel)
        except InferenceServerException as exc:
            return Outcome("error", error=str(exc.message() or exc))
        finally:
            client.stop_stream()
            client.close()

    def _responses(self, client: Any, events: queue.Queue, cancel: Cancel | None) -> Outcome:
        """Read a gRPC stream's responses to the final one, an error, a cancellation or the deadline."""
        started, parts = time.monotonic(), []
        while True:
            elapsed = time.monotonic() - started
            wait = self.timeout_s - elapsed
            if cancel is not None and cancel.after_ms is not None:
                wait = min(wait, max(cancel.after_ms / 1000 - elapsed, 0.0))
            if cancel is not None and cancel.due(len(parts), elapsed):
                client.stop_stream(cancel_requests=True)
                return Outcome("cancelled", text="".join(parts), chunks=len(parts))
            try:
                result, error = events.get(timeout=max(wait, 0.001))
            except queue.Empty:
                if time.monotonic() - started < self.timeout_s:
                    continue  # the cancellation time came
                client.stop_stream(cancel_requests=True)
                return Outcome("hang", text="".join(parts), chunks=len(parts),
                               error=f"no final response in {self.timeout_s:.0f} s")
            if error is not None:
                return Outcome("error", text="".join(parts), chunks=len(parts), error=str(error))
            data = result.as_numpy(c.TEXT_OUTPUT)
            if data is not None:
                parts.extend(x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x)
                             for x in data.reshape(-1))
            if result.get_response().parameters[wire.FINAL_RESPONSE].bool_param:
                return Outcome("ok", text="".join(parts), chunks=len(parts))


def _json_reply(r: requests.Response) -> Outcome:
    """A /generate reply -> Outcome (Triton's 200 with {"error": ...} is an error)."""
    try:
        reply = wire.parse_reply(r.content)
    except wire.ErrorReply as exc:
        return Outcome("error", status=r.status_code, error=exc.message)
    except wire.WireError as exc:
        return Outcome("error", status=r.status_code, error=str(exc))
    text = reply.get(c.TEXT_OUTPUT, "")
    return Outcome("ok", status=r.status_code, text="".join(text) if isinstance(text, list) else str(text), chunks=1)


def body_inputs(model: str, body: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """The generate extension's JSON fields as gRPC input arrays of ``model``'s contract (batch of one)."""
    specs = _SPECS[model]
    return [(name, wire.to_array(specs[name], value)) for name, value in body.items()]


def raw_inputs(inputs: tuple[tuple[str, str, Any], ...]) -> list[tuple[str, np.ndarray]]:
    """Catalogue gRPC inputs ``(name, triton dtype, nested list)`` -> arrays, exactly as given."""
    out = []
    for name, dtype, value in inputs:
        if dtype == "BYTES":
            arr = np.array([[v.encode() if isinstance(v, str) else v for v in row] for row in value], dtype=object)
        else:
            arr = np.array(value, dtype=wire.NUMPY_DTYPES[dtype])
        out.append((name, arr))
    return out

"""The ensemble over gRPC bidirectional streaming (tritonclient's stream API; ``ModelInfer`` refuses
decoupled models).

Server behaviour this relies on (tritonserver 2.51):

* Through the ensemble the gRPC final flag (``triton_final_response``, with
  ``enable_empty_final_response=True``) comes on the last *data* response (an empty final response, as a
  decoupled model alone sends, is accepted too): text is read from every response before the flag is
  checked.  An error ends the stream with no final response.
* tritonclient calls the stream callback by keyword (``result=``, ``error=``).
"""
from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from qwen_triton import wire
from qwen_triton.serving import contract as c

from .base import DEFAULT_URLS, ClientError, ServerError
from .request import INPUT_SPECS, GenerateRequest
from .response import Chunk, GenerateResult, RequestStats, TextStream, collect, flat_output, texts_of

if TYPE_CHECKING:
    from typing_extensions import Self


class _GrpcCall:
    """One request on its own gRPC bidirectional stream (and channel)."""

    def __init__(self, owner: GrpcClient, req: GenerateRequest, stream: bool):
        import tritonclient.grpc as grpcclient

        self.owner = owner
        self.queue: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.cancelled = False
        self.stopped = False
        self.client = grpcclient.InferenceServerClient(owner.url, verbose=owner.verbose,
                                                       channel_args=owner.channel_args)
        inputs = []
        for name, arr in req.to_arrays(stream=stream).items():
            tensor = grpcclient.InferInput(name, list(arr.shape), INPUT_SPECS[name].dtype)
            tensor.set_data_from_numpy(arr)
            inputs.append(tensor)
        try:
            self.client.start_stream(callback=self._callback, stream_timeout=owner.timeout)
            self.client.async_stream_infer(owner.model, inputs, request_id=req.request_id or uuid.uuid4().hex,
                                           enable_empty_final_response=True)
        except Exception as exc:
            # A stream that failed at once (server unreachable) refuses the request with "The stream is
            # no longer in valid state"; the reason is the error its callback got.
            try:
                _, reason = self.queue.get(timeout=1.0)
            except queue.Empty:
                reason = None
            self.stop(cancel=True)
            raise _grpc_error(reason or exc, owner.url) from exc

    def _callback(self, result: Any = None, error: Any = None) -> None:  # tritonclient passes keywords
        self.queue.put((result, error))

    def responses(self) -> Iterator[Chunk]:
        finished = False
        try:
            while True:
                result, error = self.queue.get()
                if error is not None:
                    finished = True
                    if self.cancelled:
                        return
                    raise _grpc_error(error, self.owner.url)
                response = result.get_response()
                if response.outputs:
                    other = {}
                    for out in response.outputs:
                        if out.name != c.TEXT_OUTPUT:
                            other[out.name] = flat_output(result.as_numpy(out.name))
                    yield texts_of(result.as_numpy(c.TEXT_OUTPUT)), other
                param = response.parameters.get(wire.FINAL_RESPONSE)
                if param is not None and param.bool_param:
                    finished = True
                    return
        finally:
            self.stop(cancel=not finished)

    def cancel(self) -> None:
        self.cancelled = True
        self.stop(cancel=True)

    def stop(self, cancel: bool) -> None:
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
        try:
            if cancel:
                # stop_stream(cancel_requests=True) cancels the RPC but leaves gRPC's request-sending
                # thread waiting for a next request; end that iterator too.
                stream = getattr(self.client, "_stream", None)
                self.client.stop_stream(cancel_requests=True)
                q = getattr(stream, "_request_queue", None)
                if q is not None:
                    q.put(None)
            else:
                self.client.stop_stream()
            self.client.close()
        except Exception:  # noqa: BLE001,S110 -- closing must never mask the request's own outcome
            pass
        finally:
            self.owner._forget(self)


def _grpc_error(exc: Any, url: str) -> ClientError:
    """An InferenceServerException (or other failure) -> ServerError / ClientError with the message."""
    message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    if status == "StatusCode.UNAVAILABLE" and "connect" in str(message).lower():
        return ClientError(f"cannot reach {url}: {message}")
    return ServerError(str(message), status)


class GrpcClient:
    """The ensemble over gRPC bidirectional streaming.  ``url``: ``host:port`` (a ``grpc://`` prefix is
    accepted).  ``timeout``: the stream's deadline in seconds (None: none)."""

    def __init__(self, url: str = DEFAULT_URLS["grpc"], model: str = c.ENSEMBLE, timeout: float | None = 600.0,
                 verbose: bool = False, channel_args: list[tuple[str, Any]] | None = None):
        host, port, _ = wire.split_url(url, wire.DEFAULT_PORTS["grpc"])
        self.url = f"{host}:{port}"
        self.model = model
        self.timeout = timeout
        self.verbose = verbose
        self.channel_args = channel_args
        self._calls: set[_GrpcCall] = set()
        self._lock = threading.Lock()

    def _start(self, req: GenerateRequest, stream: bool) -> _GrpcCall:
        call = _GrpcCall(self, req, stream)
        with self._lock:
            self._calls.add(call)
        if call.stopped:
            self._forget(call)
        return call

    def _forget(self, call: _GrpcCall) -> None:
        with self._lock:
            self._calls.discard(call)

    def ready(self) -> bool:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        try:
            return bool(client.is_server_ready())
        except Exception:  # noqa: BLE001 -- any failure means "not ready"
            return False
        finally:
            client.close()

    def generate(self, req: GenerateRequest) -> GenerateResult:
        """The whole reply.  ``req.stream`` false: one response; true: the streamed chunks, accumulated."""
        if req.stream:
            return self.stream(req).result()
        stats = RequestStats()
        call = self._start(req, stream=False)
        texts, outputs = collect(self._timed(call.responses(), stats))
        stats.mark_done()
        return GenerateResult(texts[0] if texts else "", texts or [""], outputs, stats, call.cancelled)

    @staticmethod
    def _timed(chunks: Iterator[Chunk], stats: RequestStats) -> Iterator[Chunk]:
        for chunk in chunks:
            stats.responses += 1
            if chunk[0] and chunk[0][0]:
                stats.mark_chunk()
            yield chunk

    def stream(self, req: GenerateRequest) -> TextStream:
        """Text chunks as they arrive (the request is sent with stream=true)."""
        stats = RequestStats()
        call = self._start(req, stream=True)
        return TextStream(call.responses(), call.cancel, stats, lambda: call.cancelled)

    def cancel(self) -> None:
        """Cancel every request of this client still in flight (``stop_stream(cancel_requests=True)``)."""
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.cancel()

    def close(self) -> None:
        self.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

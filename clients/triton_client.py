"""A small typed client of the qwen-triton `ensemble` model, over HTTP or gRPC.

* :class:`GenerateRequest` -- text or chat messages, ``max_tokens``, sampling, stop/bad words, ``stream``;
  it maps itself onto the ensemble's input tensors (names from ``qwen_triton.serving.contract``).
* :class:`HttpClient` -- ``generate()`` over ``POST /v2/models/ensemble/generate`` (one response) and
  ``stream()`` over ``/generate_stream`` (Server-Sent Events).  HTTP ``/infer`` refuses decoupled models,
  so it is not used.
* :class:`GrpcClient` -- ``generate()`` and ``stream()`` over gRPC bidirectional streaming
  (``ModelInfer`` also refuses decoupled models); ``cancel()`` cancels this client's requests in flight.

``stream()`` returns a :class:`TextStream`: an iterator of text chunks (new text only, as it arrives) that
also records timing (:class:`RequestStats`: time to first chunk, latency, each chunk's arrival) and can be
cancelled from any thread.  Every Triton error becomes :class:`ServerError` with the server's message;
failures to reach the server are :class:`ClientError`.

No global state: each request opens its own HTTP connection or gRPC stream, so one client object can be
shared by many threads (the load tests do).

Server behaviour this code relies on (tritonserver 2.51):

* ``/generate`` on a request that yields several responses answers **200** with ``{"error": ...}`` in the
  body, so the body is checked, not only the status; ``generate()`` therefore sends ``stream=false``.
* A request rejected before its first response gets 400 with the model's message (on ``/generate_stream``
  the body is ``data: {"error": ...}``); an error after the first event arrives as a ``data:`` error
  object under status 200.
* Through the ensemble the gRPC final flag (``triton_final_response``, with
  ``enable_empty_final_response=True``) comes on the last *data* response (an empty final response, as a
  decoupled model alone sends, is accepted too): text is read from every response before the flag is
  checked.  An error ends the stream with no final response.
* Cancelling an ensemble request (gRPC ``stop_stream(cancel_requests=True)``, or closing an HTTP stream)
  ends the client's stream, but Triton 2.51 only checks cancellation between ensemble steps: the engine
  step keeps generating until max_tokens, and the ensemble request stays "in flight" for good (server
  shutdown then waits the whole ``--exit-timeout-secs``).
* tritonclient calls the stream callback by keyword (``result=``, ``error=``).
"""
from __future__ import annotations

import contextlib
import http.client
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from qwen_triton import wire
from qwen_triton.serving import contract as c

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ClientError", "GenerateRequest", "GenerateResult", "GrpcClient", "HttpClient", "RequestStats",
    "ServerError", "TextStream", "make_client", "parse_sse",
]

# (GenerateRequest attribute, ensemble input). Every ensemble input this engine supports has a field
# (Python names of our own: min_tokens and seed go on the wire as min_length and random_seed).
REQUEST_FIELDS: tuple[tuple[str, str], ...] = (
    ("text", c.TEXT_INPUT),
    ("messages", c.MESSAGES),
    ("max_tokens", c.MAX_TOKENS),
    ("bad_words", c.BAD_WORDS),
    ("stop", c.STOP_WORDS),
    ("end_id", c.END_ID),
    ("pad_id", c.PAD_ID),
    ("top_k", c.TOP_K),
    ("top_p", c.TOP_P),
    ("temperature", c.TEMPERATURE),
    ("length_penalty", c.LENGTH_PENALTY),
    ("repetition_penalty", c.REPETITION_PENALTY),
    ("presence_penalty", c.PRESENCE_PENALTY),
    ("frequency_penalty", c.FREQUENCY_PENALTY),
    ("min_tokens", c.MIN_LENGTH),
    ("seed", c.RANDOM_SEED),
    ("beam_width", c.BEAM_WIDTH),
    ("num_return_sequences", c.NUM_RETURN_SEQUENCES),
    ("stream", c.STREAM),
    ("exclude_input_in_output", c.EXCLUDE_INPUT_IN_OUTPUT),
    ("return_log_probs", c.RETURN_LOG_PROBS),
    ("return_context_logits", c.RETURN_CONTEXT_LOGITS),
    ("return_generation_logits", c.RETURN_GENERATION_LOGITS),
    ("return_perf_metrics", c.RETURN_PERF_METRICS),
    ("embedding_bias_words", c.EMBEDDING_BIAS_WORDS),
    ("embedding_bias_weights", c.EMBEDDING_BIAS_WEIGHTS),
)
INPUT_SPECS: dict[str, c.TensorSpec] = {spec.name: spec for spec in c.ENSEMBLE_INPUTS}
OUTPUT_NAMES = frozenset(spec.name for spec in c.ENSEMBLE_OUTPUTS)
# Where the clients connect by default: Triton's default ports on this machine.
DEFAULT_URLS: Mapping[str, str] = MappingProxyType({kind: f"localhost:{wire.DEFAULT_PORTS[kind]}"
                                                    for kind in ("http", "grpc")})


# ------------------------------------------------------------------------------------------------ errors
class ClientError(Exception):
    """The request could not be made or its answer could not be read (server unreachable, bad reply)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ServerError(ClientError):
    """Triton answered with an error; ``message`` is the server's text, verbatim.

    ``status`` is the HTTP status (HTTP) or the gRPC status name (gRPC) where known."""

    def __init__(self, message: str, status: int | str | None = None):
        super().__init__(message)
        self.status = status

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------------------------------------- request
@dataclass
class GenerateRequest:
    """One generation request for the ensemble: either ``text`` (tokenized as given) or chat ``messages``
    (a list of ``{"role", "content"}`` or its JSON text, rendered with the model's chat template).

    Fields left at None are not sent, so the server's defaults apply (greedy unless the checkpoint's
    generation config asks for sampling; ``temperature=0`` is greedy).
    """

    text: str | None = None
    messages: Sequence[Mapping[str, str]] | str | None = None
    max_tokens: int = 128
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    length_penalty: float | None = None
    min_tokens: int | None = None
    stop: Sequence[str] = ()
    bad_words: Sequence[str] = ()
    end_id: int | None = None
    pad_id: int | None = None
    beam_width: int | None = None
    num_return_sequences: int | None = None
    stream: bool = False
    exclude_input_in_output: bool | None = True  # the reply only (upstream echoes the prompt when not streaming)
    return_log_probs: bool | None = None
    return_context_logits: bool | None = None
    return_generation_logits: bool | None = None
    return_perf_metrics: bool | None = None
    embedding_bias_words: Sequence[str] = ()
    embedding_bias_weights: Sequence[float] = ()
    request_id: str | None = None  # gRPC request id (HTTP generate has none)

    def __post_init__(self) -> None:
        if (self.text is None) == (self.messages is None):
            raise ValueError("give exactly one of text or messages")
        if any(isinstance(words, str) for words in (self.stop, self.bad_words, self.embedding_bias_words)):
            raise TypeError("stop, bad_words and embedding_bias_words are sequences of strings, not one string")

    def messages_json(self) -> str | None:
        """``messages`` as the JSON text the ``messages`` input carries."""
        if self.messages is None or isinstance(self.messages, str):
            return self.messages
        return json.dumps([dict(m) for m in self.messages], ensure_ascii=False)

    def values(self, stream: bool | None = None) -> dict[str, Any]:
        """{ensemble input name: Python value (scalar, or list for word lists)} of the fields that are set
        (empty lists are not sent); ``stream`` overrides the request's own flag."""
        out: dict[str, Any] = {}
        for attr, name in REQUEST_FIELDS:
            value = self.messages_json() if attr == "messages" else getattr(self, attr)
            if attr == "stream" and stream is not None:
                value = stream
            if value is None:
                continue
            value = wire.python_value(INPUT_SPECS[name], value)
            if not (isinstance(value, list) and not value):
                out[name] = value
        return out

    def to_json(self, stream: bool | None = None) -> dict[str, Any]:
        """The JSON body of ``/generate`` and ``/generate_stream``."""
        return self.values(stream)

    def to_arrays(self, stream: bool | None = None, batched: bool = True) -> dict[str, np.ndarray]:
        """{name: numpy array} for the infer API: every ensemble model is batched, so each tensor gets a
        leading batch dimension of 1 unless ``batched=False``."""
        return {name: wire.to_array(INPUT_SPECS[name], value, batched)
                for name, value in self.values(stream).items()}


# ----------------------------------------------------------------------------------------------- results
@dataclass
class RequestStats:
    """Client-side timing of one request (seconds, ``time.perf_counter`` clock).

    ``first_chunk_s`` is the time to the first non-empty text chunk (TTFT when streaming); ``chunk_s`` the
    arrival of every non-empty chunk since the start (inter-chunk gaps are its differences)."""

    started: float = field(default_factory=time.perf_counter)
    first_chunk_s: float | None = None
    latency_s: float | None = None
    chunk_s: list[float] = field(default_factory=list)
    responses: int = 0

    @property
    def chunks(self) -> int:
        return len(self.chunk_s)

    def mark_chunk(self, now: float | None = None) -> None:
        offset = (time.perf_counter() if now is None else now) - self.started
        if self.first_chunk_s is None:
            self.first_chunk_s = offset
        self.chunk_s.append(offset)

    def mark_done(self) -> None:
        if self.latency_s is None:
            self.latency_s = time.perf_counter() - self.started


@dataclass
class GenerateResult:
    """The whole reply: ``text`` (the first sequence), ``texts`` (every returned sequence), ``outputs``
    (the other output tensors of the last response, as lists: cum_log_probs, ...), ``stats``."""

    text: str
    texts: list[str]
    outputs: dict[str, Any]
    stats: RequestStats
    cancelled: bool = False


# One data response: the new text of each returned sequence, and the other outputs.
_Chunk = tuple[list[str], dict[str, Any]]


class TextStream(Iterator[str]):
    """Text chunks of one streaming request, as they arrive (empty chunks are skipped).

    ``text`` accumulates what was yielded, ``stats`` times it, ``outputs`` holds the last response's other
    tensors.  ``cancel()`` (any thread) asks the server to stop; iteration then ends quietly with
    ``cancelled`` set.  Closing the stream (or leaving a ``with`` block) early cancels it too.
    Errors raise :class:`ServerError` from ``next()``."""

    def __init__(self, chunks: Iterator[_Chunk], cancel: Callable[[], None], stats: RequestStats,
                 is_cancelled: Callable[[], bool] | None = None, on_close: Callable[[], None] | None = None):
        self._chunks = chunks
        self._on_close = on_close
        self._cancel = cancel
        self._is_cancelled = is_cancelled
        self._cancelled = False
        self.stats = stats
        self.texts: list[str] = []
        self.outputs: dict[str, Any] = {}
        self.finished = False

    @property
    def cancelled(self) -> bool:
        """True once this request was cancelled (by ``cancel()``, ``close()`` or its client)."""
        return self._cancelled or bool(self._is_cancelled and self._is_cancelled())

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        while True:
            if self.cancelled and not self.finished:  # nothing more after a cancel, even if buffered
                self.close()
            if self.finished:
                raise StopIteration
            try:
                texts, outputs = next(self._chunks)
            except BaseException:  # StopIteration, ServerError, ...: the stream is over either way
                self.finished = True
                self.stats.mark_done()
                raise
            self.stats.responses += 1
            self.outputs.update(outputs)
            for i, t in enumerate(texts):
                if i < len(self.texts):
                    self.texts[i] += t
                else:
                    self.texts.append(t)
            if texts and texts[0]:
                self.stats.mark_chunk()
                return texts[0]

    def cancel(self) -> None:
        """Cancel the request on the server (thread-safe; a no-op once finished)."""
        if not self.finished:
            self._cancelled = True
            self._cancel()

    def close(self) -> None:
        if not self.finished:
            self.cancel()
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        if self._on_close is not None:
            self._on_close()
        self.finished = True
        self.stats.mark_done()

    def result(self) -> GenerateResult:
        """Consume the rest of the stream; the whole reply."""
        for _ in self:
            pass
        return GenerateResult(self.text, list(self.texts) or [""], dict(self.outputs), self.stats,
                              self.cancelled)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------- shared
def _texts(value: Any) -> list[str]:
    """A text_output value (str, bytes, nested lists or a numpy array of them) as a flat list of str."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist()
    if isinstance(value, (str, bytes)):
        value = [value]
    out: list[str] = []
    for item in value:
        if isinstance(item, (list, tuple)):
            out.extend(_texts(item))
        elif isinstance(item, bytes):
            out.append(item.decode("utf-8", errors="replace"))
        else:
            out.append(str(item))
    return out


def _flat(arr: np.ndarray | None) -> Any:
    """A gRPC output tensor the way the HTTP generate extension writes it: one element as a scalar, more
    as a flat list (the batch dimension of 1 is gone either way)."""
    if arr is None:
        return None
    flat = arr.reshape(-1).tolist()
    return flat[0] if len(flat) == 1 else flat


def _collect(chunks: Iterable[_Chunk]) -> tuple[list[str], dict[str, Any]]:
    texts: list[str] = []
    outputs: dict[str, Any] = {}
    for new, other in chunks:
        outputs.update(other)
        for i, t in enumerate(new):
            if i < len(texts):
                texts[i] += t
            else:
                texts.append(t)
    return texts, outputs


# --------------------------------------------------------------------------------------------------- SSE
def parse_sse(lines: Iterable[bytes | str], raise_errors: bool = True) -> Iterator[dict[str, Any]]:
    """Server-Sent Events -> their JSON ``data`` objects (``qwen_triton.wire.parse_sse``) with this
    library's errors: an ``"error"`` object raises :class:`ServerError` with that message (or is yielded as
    is with ``raise_errors=False``); data that is not a JSON object raises :class:`ClientError`."""
    try:
        yield from wire.parse_sse(lines, raise_errors=raise_errors)
    except wire.ErrorReply as exc:
        raise ServerError(exc.message, 200) from None
    except wire.WireError as exc:
        raise ClientError(str(exc)) from None


def _split_outputs(obj: Mapping[str, Any]) -> _Chunk:
    """One JSON response of /generate(_stream) -> (texts, other outputs)."""
    other = {k: v for k, v in obj.items() if k in OUTPUT_NAMES and k != c.TEXT_OUTPUT}
    return _texts(obj.get(c.TEXT_OUTPUT)), other


# -------------------------------------------------------------------------------------------------- HTTP
class HttpClient:
    """The ensemble over Triton's HTTP generate extension.  ``url``: ``host:port`` or ``http(s)://...``."""

    def __init__(self, url: str = DEFAULT_URLS["http"], model: str = c.ENSEMBLE, timeout: float | None = 600.0):
        self.url = url
        self.host, self.port, scheme = wire.split_url(url, wire.DEFAULT_PORTS["http"])
        self.https = scheme == "https"
        self.model = model
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def _send(self, conn: http.client.HTTPConnection, stream: bool, body: dict[str, Any], accept: str) -> None:
        path = wire.generate_path(self.model, stream)
        with self._errors(conn):
            conn.request("POST", path, body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                         headers={"Content-Type": "application/json", "Accept": accept})

    def _response(self, conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
        with self._errors(conn):
            return conn.getresponse()

    @contextlib.contextmanager
    def _errors(self, conn: http.client.HTTPConnection) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            conn.close()
            raise ClientError(f"cannot reach {self.url}: {exc}") from exc
        except http.client.HTTPException as exc:  # e.g. a gRPC port answering HTTP/2 frames
            conn.close()
            raise ClientError(f"{self.url} did not answer HTTP/1.1 (is it Triton's HTTP port?): "
                              f"{type(exc).__name__} {str(exc)[:80]!r}") from exc

    def ready(self) -> bool:
        """True when ``/v2/health/ready`` answers 200."""
        scheme = "https" if self.https else "http"
        return wire.is_ready(f"{scheme}://{self.host}:{self.port}", timeout=self.timeout)

    def generate(self, req: GenerateRequest) -> GenerateResult:
        """The whole reply.  ``req.stream`` false: one ``/generate`` call; true: the stream, accumulated
        (its stats then time every chunk)."""
        if req.stream:
            return self.stream(req).result()
        stats = RequestStats()
        conn = self._connection()
        try:
            self._send(conn, False, req.to_json(stream=False), "application/json")
            resp = self._response(conn)
            try:
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise ClientError(f"reading the reply from {self.url} failed: {exc}") from exc
        finally:
            conn.close()
        if resp.status != 200:
            raise ServerError(wire.error_message(body), resp.status)
        try:
            obj = wire.parse_reply(body)
        except wire.ErrorReply as exc:  # several responses: 200 with an error in the body
            raise ServerError(exc.message, resp.status) from None
        except wire.WireError as exc:
            raise ClientError(str(exc)) from None
        texts, outputs = _split_outputs(obj)
        stats.responses = 1
        stats.mark_chunk()
        stats.mark_done()
        return GenerateResult(texts[0] if texts else "", texts or [""], outputs, stats)

    def stream(self, req: GenerateRequest) -> TextStream:
        """Text chunks as they arrive, over ``/generate_stream`` (the request is sent with stream=true)."""
        stats = RequestStats()
        conn = self._connection()
        state = {"cancelled": False}

        def cancel() -> None:
            state["cancelled"] = True
            sock = conn.sock
            if sock is not None:  # unblock a reader in another thread; the server sees the disconnect
                try:
                    sock.shutdown(2)
                except OSError:
                    pass

        # The request goes out now (so the stats time it from here); its reply is read as iterated.
        self._send(conn, True, req.to_json(stream=True), "text/event-stream")

        def chunks() -> Iterator[_Chunk]:
            try:
                resp = self._response(conn)
                if resp.status != 200:
                    raise ServerError(wire.error_message(resp.read()), resp.status)
                try:
                    for event in parse_sse(iter(resp.readline, b"")):
                        yield _split_outputs(event)
                except (OSError, ValueError, http.client.HTTPException) as exc:
                    if state["cancelled"]:
                        return
                    raise ClientError(f"the stream from {self.url} broke: {exc}") from exc
            except ClientError:
                if state["cancelled"]:
                    return
                raise
            finally:
                conn.close()

        return TextStream(chunks(), cancel, stats, lambda: state["cancelled"], on_close=conn.close)


# -------------------------------------------------------------------------------------------------- gRPC
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

    def responses(self) -> Iterator[_Chunk]:
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
                            other[out.name] = _flat(result.as_numpy(out.name))
                    yield _texts(result.as_numpy(c.TEXT_OUTPUT)), other
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
        texts, outputs = _collect(self._timed(call.responses(), stats))
        stats.mark_done()
        return GenerateResult(texts[0] if texts else "", texts or [""], outputs, stats, call.cancelled)

    @staticmethod
    def _timed(chunks: Iterator[_Chunk], stats: RequestStats) -> Iterator[_Chunk]:
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


def make_client(url: str, protocol: str = "http", **kwargs: Any) -> HttpClient | GrpcClient:
    """``HttpClient`` or ``GrpcClient`` by protocol name ("http" or "grpc")."""
    if protocol == "http":
        return HttpClient(url, **kwargs)
    if protocol == "grpc":
        return GrpcClient(url, **kwargs)
    raise ValueError(f"protocol must be http or grpc, got {protocol!r}")


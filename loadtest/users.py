"""Locust users for the qwen-triton ensemble, on gevent.

* :class:`HttpStreamUser` -- ``POST /v2/models/ensemble/generate_stream`` (Server-Sent Events) over a
  kept-alive geventhttpclient connection.
* :class:`GrpcStreamUser` -- gRPC bidirectional streaming (``ModelStreamInfer``, tritonclient's protobuf
  stubs): one open stream per user, requests sent one after another on it, the empty final response asked
  for, the end read from ``triton_final_response``.  gRPC is made to cooperate with gevent
  (``init_grpc_gevent()``, which the runners call before any channel exists),
  and the users share a few channels (why: :class:`_Channels`).
* :class:`HttpGenerateUser` -- ``POST /v2/models/ensemble/generate`` (one response: no TTFT, no ITL).

Each user is a closed loop with no wait: it sends a request, reads the whole reply, sends the next, so the
number of users is the concurrency.  Every request becomes a :class:`loadtest.metrics.RequestRecord` in
``environment.loadtest`` (a :class:`loadtest.context.LoadTestContext`) and a Locust request event (its
response time is the end-to-end latency, its length the output tokens), so Locust's own statistics and
web UI work too.

Importing this module patches the standard library for gevent (Locust does it on import): import it
before anything opens sockets or threads.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # first, before anything opens sockets or threads (importing Locust would do it too)

import functools
import json
import os
import queue
import socket
import time
import uuid
from typing import Any

import gevent
import grpc
from geventhttpclient import HTTPClient
from grpc.experimental import gevent as grpc_gevent
from locust import User, constant, task

from qwen_triton import wire
from qwen_triton.serving import contract as c

from .context import LoadTestContext
from .metrics import RequestRecord, count_tokens
from .workloads import Session


@functools.cache
def init_grpc_gevent() -> None:
    """Make grpc cooperate with gevent; must run before the first channel (loadtest.run and the
    locustfile call it; once is enough)."""
    grpc_gevent.init_gevent()

import tritonclient.grpc as grpcclient  # after init_gevent
from tritonclient.grpc import service_pb2, service_pb2_grpc

INPUT_SPECS = {spec.name: spec for spec in c.ENSEMBLE_INPUTS}
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
SSE_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


class RequestFailed(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class Reply:
    """What one request brought back: (arrival time, tokens) of every token-bearing response, the text."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, int]] = []
        self.text: list[str] = []
        self.responses = 0
        self.token_source = c.OUTPUT_LOG_PROBS

    def add(self, now: float, text: Any, n: int | None) -> None:
        """One response: its text and its token count (None: the response had no output_log_probs)."""
        self.responses += 1
        if n is None:  # no output_log_probs: one token per non-empty response
            self.token_source = "responses"
            n = 1 if text else 0
        if isinstance(text, list):
            text = "".join(str(t) for t in text)
        if text:
            self.text.append(str(text))
        if n:
            self.arrivals.append((now, n))


def _failure(exc: BaseException) -> tuple[str, str]:
    """(error kind, message) of a failed request."""
    if isinstance(exc, RequestFailed):
        return exc.kind, exc.message
    if isinstance(exc, wire.ErrorReply):  # the server's {"error": ...} (an SSE event or a /generate reply)
        return "server", exc.message
    return _exception_kind(exc), f"{type(exc).__name__}: {exc}"


def _exception_kind(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, gevent.Timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, (ConnectionError, OSError)):
        return "connection"
    if isinstance(exc, ValueError):  # wire.WireError included: not JSON, not a JSON object
        return "protocol"
    return "client"


class LoadTestUser(User):
    """A closed-loop user: one request at a time, no wait, reading ``environment.loadtest``."""

    abstract = True
    wait_time = constant(0)
    protocol = ""
    streaming = True

    def on_start(self) -> None:
        self.ctx: LoadTestContext = self.environment.loadtest
        self.index, self.rng = self.ctx.next_user()
        self.session: Session | None = None
        self.session_id = -1
        self.turn_index = 0
        self.reply: str | None = None
        self.connect()

    def on_stop(self) -> None:
        self.disconnect()

    # -- protocol hooks --------------------------------------------------------------------------
    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def reset(self) -> None:
        """Drop the connection after a failure; the next request opens a new one."""
        self.disconnect()
        self.connect()

    def send(self, inputs: dict[str, Any], reply: Reply) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    # -- the loop ----------------------------------------------------------------------------------
    def _next_turn(self):
        for _ in range(100):
            if self.session is not None:
                turn = self.session.next_turn(self.reply)
                if turn is not None:
                    self.turn_index += 1
                    return turn
            self.session = self.ctx.workload.session(self.rng)
            self.session_id = self.ctx.next_session()
            self.turn_index = 0
            self.reply = None
        raise RuntimeError("the workload produced no turn in 100 sessions")

    @task
    def one_request(self) -> None:
        ctx = self.ctx
        if not ctx.may_start():
            gevent.sleep(0.02)
            return
        turn = self._next_turn()
        record = RequestRecord(
            level=ctx.level, protocol=self.protocol, workload=ctx.workload.name, user=self.index,
            session=self.session_id, turn=self.turn_index, start_s=ctx.now(), input_tokens=turn.input_tokens,
            requested_tokens=turn.max_tokens, forced=turn.forced)
        reply = Reply()
        exc: BaseException | None = None
        ctx.begin()
        t0 = time.perf_counter()
        try:
            timeout = RequestFailed("timeout", f"no full reply in {ctx.timeout_s} s")
            with gevent.Timeout(ctx.timeout_s, timeout):
                self.send(ctx.inputs(turn.inputs(), self.streaming), reply)
            t_end = time.perf_counter()
            record.finish(t_end, t0, reply.arrivals, self.streaming)
            if record.output_tokens == 0:
                raise RequestFailed("empty", "the reply carried no tokens")
            record.ok = True
        except gevent.GreenletExit:  # the runner ended the level while this request was in flight
            record.cancelled = True
            record.error = "cancelled at the end of the level"
            record.finish(time.perf_counter(), t0, reply.arrivals, self.streaming)
            ctx.done(record)
            raise
        except Exception as e:  # noqa: BLE001 -- every failure is a record, never a crashed user
            exc = e
            record.finish(time.perf_counter(), t0, reply.arrivals, self.streaming)
            record.ok = False
            record.error_kind, message = _failure(e)
            record.error = message[:500]
            self.reset()
        record.responses = reply.responses
        record.token_source = reply.token_source
        self.reply = "".join(reply.text)
        record.reply_chars = len(self.reply)
        ctx.done(record)
        self.environment.events.request.fire(
            request_type=self.protocol, name=ctx.workload.name,
            response_time=(record.latency_s or 0) * 1000.0, response_length=record.output_tokens,
            exception=exc, context={"level": ctx.level})
        if not record.ok:
            self.session = None  # a failed turn ends its conversation
        elif ctx.think_time_s > 0:
            gevent.sleep(ctx.think_time_s)


class _HttpBase(LoadTestUser):
    abstract = True

    def connect(self) -> None:
        t = self.ctx.target
        self.http = HTTPClient(t.host, port=t.http_port, concurrency=1, connection_timeout=30.0,
                               network_timeout=self.ctx.timeout_s)

    def disconnect(self) -> None:
        http = getattr(self, "http", None)
        if http is not None:
            http.close()
            self.http = None

    def _post(self, stream: bool, inputs: dict[str, Any], headers: dict[str, str]):
        path = wire.generate_path(self.ctx.target.model, stream)
        body = json.dumps(inputs, ensure_ascii=False).encode("utf-8")
        resp = self.http.post(path, body=body, headers=headers)
        if resp.status_code != 200:
            kind = "http_5xx" if resp.status_code >= 500 else "http_4xx"
            raise RequestFailed(kind, f"HTTP {resp.status_code}: {wire.error_message(resp.read())}"[:500])
        return resp


class HttpStreamUser(_HttpBase):
    """The ensemble over HTTP ``/generate_stream`` (SSE); each ``data:`` event is one response."""

    protocol = "http_stream"
    streaming = True

    def send(self, inputs: dict[str, Any], reply: Reply) -> None:
        resp = self._post(True, inputs, SSE_HEADERS)
        # an error event raises wire.ErrorReply ("server"), data that is no JSON object wire.WireError
        for event in wire.parse_sse(iter(lambda: resp.readline(b"\n"), b""), raise_errors=True):
            reply.add(time.perf_counter(), event.get(c.TEXT_OUTPUT), count_tokens(event.get(c.OUTPUT_LOG_PROBS)))


class HttpGenerateUser(_HttpBase):
    """The ensemble over HTTP ``/generate``: one response per request (latency and tokens only)."""

    protocol = "http"
    streaming = False

    def send(self, inputs: dict[str, Any], reply: Reply) -> None:
        resp = self._post(False, inputs, JSON_HEADERS)
        body = resp.read()
        now = time.perf_counter()
        obj = wire.parse_reply(body)  # e.g. several responses: Triton answers 200 with an error in the body
        reply.add(now, obj.get(c.TEXT_OUTPUT), count_tokens(obj.get(c.OUTPUT_LOG_PROBS)))


def grpc_request(model: str, inputs: dict[str, Any], request_id: str) -> Any:
    """A ModelInferRequest for the stream (dtypes from the contract; the empty final response asked for,
    so the end of every request is marked even when its last data response is not)."""
    req = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, value in inputs.items():
        spec = INPUT_SPECS[name]
        arr = wire.to_array(spec, value)  # a batch of one: [1, 1], or [1, N] for a list
        req.inputs.add(name=name, datatype=spec.dtype, shape=list(arr.shape))
        req.raw_input_contents.append(wire.raw_contents(arr))
    req.parameters[wire.ENABLE_EMPTY_FINAL_RESPONSE].bool_param = True
    return req


class _Channels:
    """gRPC channels shared by all gRPC users of this process, handed out round robin.

    Why shared: under gevent, gRPC runs each channel's completion-queue poll in gevent's native thread
    pool (10 threads by default), and an idle channel keeps its thread blocked.  With one channel per user,
    more than ~9 users starve: responses already received sit unread until a thread frees up (seen here:
    the last response of 9 of 21 streams never delivered).  So users share a few channels (each stream is
    an HTTP/2 stream on them) and the pool is widened to leave room."""

    def __init__(self) -> None:
        self.channels: dict[str, list[tuple[Any, Any]]] = {}
        self.next = 0
        self.count = int(os.environ.get("LOADTEST_GRPC_CHANNELS", "2"))

    def stub(self, url: str) -> Any:
        pool = self.channels.get(url)
        if pool is None:
            init_grpc_gevent()
            threadpool = gevent.get_hub().threadpool
            threadpool.maxsize = max(threadpool.maxsize, 4 * self.count + 8)
            options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
            pool = []
            for _ in range(self.count):
                channel = grpc.insecure_channel(url, options=options)
                pool.append((channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)))
            self.channels[url] = pool
        self.next += 1
        return pool[self.next % len(pool)][1]


CHANNELS = _Channels()


def _output_size(response: Any, name: str) -> int | None:
    for out in response.outputs:
        if out.name == name:
            size = 1
            for d in out.shape:
                size *= int(d)
            return size
    return None


class GrpcStreamUser(LoadTestUser):
    """The ensemble over gRPC bidirectional streaming (``ModelStreamInfer``): one stream per user, kept
    open between its requests, on channels shared by all users (see :class:`_Channels`)."""

    protocol = "grpc_stream"
    streaming = True

    def connect(self) -> None:
        self.stub = CHANNELS.stub(self.ctx.target.grpc_url)
        self.call = None
        self.outbox: queue.Queue | None = None
        self.sent = 0

    def _open(self) -> None:
        outbox: queue.Queue = queue.Queue()

        def requests():
            while True:
                item = outbox.get()
                if item is None:
                    return
                yield item

        self.outbox = outbox
        self.call = self.stub.ModelStreamInfer(requests())

    def disconnect(self) -> None:
        if self.outbox is not None:
            self.outbox.put(None)  # ends the request iterator gRPC reads from
            self.outbox = None
        if self.call is not None:
            try:
                self.call.cancel()
            except Exception:  # noqa: BLE001,S110 -- closing must not fail the load test
                pass
            self.call = None

    def send(self, inputs: dict[str, Any], reply: Reply) -> None:
        if self.call is None:
            self._open()
        self.sent += 1
        rid = f"lt-{self.index}-{self.sent}-{uuid.uuid4().hex[:6]}"
        self.outbox.put(grpc_request(self.ctx.target.model, inputs, rid))
        try:
            for message in self.call:
                now = time.perf_counter()
                if message.error_message:
                    raise RequestFailed("server", message.error_message[:500])
                response = message.infer_response
                if response.id and response.id != rid:
                    continue  # a late response of an earlier, failed request
                if response.outputs:
                    result = grpcclient.InferResult(response)
                    text = result.as_numpy(c.TEXT_OUTPUT)
                    chunk = "".join(t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                                    for t in text.reshape(-1)) if text is not None else ""
                    reply.add(now, chunk, _output_size(response, c.OUTPUT_LOG_PROBS))
                final = response.parameters.get(wire.FINAL_RESPONSE)
                if final is not None and final.bool_param:
                    return
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            kind = "connection" if code == grpc.StatusCode.UNAVAILABLE else "server"
            details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
            raise RequestFailed(kind, f"gRPC {code}: {details}"[:500]) from None
        raise RequestFailed("protocol", "the gRPC stream ended before the final response")


USER_CLASSES: dict[str, type[LoadTestUser]] = {
    HttpStreamUser.protocol: HttpStreamUser,
    GrpcStreamUser.protocol: GrpcStreamUser,
    HttpGenerateUser.protocol: HttpGenerateUser,
}

"""The ensemble over Triton's HTTP generate extension (``/generate``, ``/generate_stream``).

Server behaviour this relies on (tritonserver 2.51):

* ``/generate`` on a request that yields several responses answers **200** with ``{"error": ...}`` in the
  body, so the body is checked, not only the status; ``generate()`` therefore sends ``stream=false``.
* A request rejected before its first response gets 400 with the model's message (on ``/generate_stream``
  the body is ``data: {"error": ...}``); an error after the first event arrives as a ``data:`` error
  object under status 200.
* HTTP ``/infer`` refuses decoupled models, so it is not used.
"""
from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Iterator
from typing import Any

from qwen_triton import wire
from qwen_triton.serving import contract as c

from .base import DEFAULT_URLS, ClientError, ServerError
from .request import GenerateRequest
from .response import Chunk, GenerateResult, RequestStats, TextStream, parse_sse, split_outputs


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
        texts, outputs = split_outputs(obj)
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

        def chunks() -> Iterator[Chunk]:
            try:
                resp = self._response(conn)
                if resp.status != 200:
                    raise ServerError(wire.error_message(resp.read()), resp.status)
                try:
                    for event in parse_sse(iter(resp.readline, b"")):
                        yield split_outputs(event)
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

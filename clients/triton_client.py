"""A small typed client of the qwen-triton `ensemble` model, over HTTP or gRPC.

* :class:`GenerateRequest` -- text or chat messages, ``max_tokens``, sampling, stop/bad words, ``stream``;
  it maps itself onto the ensemble's input tensors (names from ``qwen_triton.serving.contract``)
  (:mod:`clients.request`).
* :class:`HttpClient` -- ``generate()`` over ``POST /v2/models/ensemble/generate`` (one response) and
  ``stream()`` over ``/generate_stream`` (Server-Sent Events) (:mod:`clients.http_transport`).
* :class:`GrpcClient` -- ``generate()`` and ``stream()`` over gRPC bidirectional streaming; ``cancel()``
  cancels this client's requests in flight (:mod:`clients.grpc_transport`).

``stream()`` returns a :class:`TextStream`: an iterator of text chunks (new text only, as it arrives) that
also records timing (:class:`RequestStats`: time to first chunk, latency, each chunk's arrival) and can be
cancelled from any thread (:mod:`clients.response`).  Every Triton error becomes :class:`ServerError` with
the server's message; failures to reach the server are :class:`ClientError` (:mod:`clients.base`).

No global state: each request opens its own HTTP connection or gRPC stream, so one client object can be
shared by many threads (the load tests do).

Cancelling an ensemble request (gRPC ``stop_stream(cancel_requests=True)``, or closing an HTTP stream)
ends the client's stream; the entry model then tells the engine to stop (``docs/architecture.md``,
Cancellation).  Each transport's module lists the server behaviour it relies on.

This module is the library's one import surface: the names below, and :func:`make_client`.
"""
from __future__ import annotations

from typing import Any

from .base import DEFAULT_URLS, ClientError, ServerError
from .grpc_transport import GrpcClient
from .http_transport import HttpClient
from .request import INPUT_SPECS, REQUEST_FIELDS, GenerateRequest
from .response import GenerateResult, RequestStats, TextStream, parse_sse

__all__ = [
    "DEFAULT_URLS", "INPUT_SPECS", "REQUEST_FIELDS",
    "ClientError", "GenerateRequest", "GenerateResult", "GrpcClient", "HttpClient", "RequestStats",
    "ServerError", "TextStream", "make_client", "parse_sse",
]


def make_client(url: str, protocol: str = "http", **kwargs: Any) -> HttpClient | GrpcClient:
    """``HttpClient`` or ``GrpcClient`` by protocol name ("http" or "grpc")."""
    if protocol == "http":
        return HttpClient(url, **kwargs)
    if protocol == "grpc":
        return GrpcClient(url, **kwargs)
    raise ValueError(f"protocol must be http or grpc, got {protocol!r}")

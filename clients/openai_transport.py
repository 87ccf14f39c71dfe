"""The terminal clients through the OpenAI-compatible API: :class:`OpenAIClient` serves a
:class:`GenerateRequest` with the official ``openai`` SDK against ``python -m qwen_triton.openai_api`` (which
``make serve`` starts on port 9000), the way :class:`HttpClient` and :class:`GrpcClient` serve it through
Triton: ``generate()`` for the whole reply, ``stream()`` for a :class:`TextStream`.

Chat ``messages`` go to ``/v1/chat/completions`` and ``text`` to ``/v1/completions``.  The OpenAI API has
``max_tokens``, ``temperature``, ``top_p``, ``seed``, the presence and frequency penalties and ``stop``
strings (at most 4); a request that sets any other field is refused here, naming it, rather than sent
without it (``openai_params``).  Cancelling a stream closes its HTTP connection, and the service then
cancels the engine request.  SDK errors become this library's: the service's ``error.message`` as a
:class:`ServerError` with the HTTP status, an unreachable service as a :class:`ClientError`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

from .base import ClientError, ServerError
from .request import GenerateRequest
from .response import Chunk, GenerateResult, RequestStats, TextStream

DEFAULT_BASE_URL = "http://127.0.0.1:9000/v1"
BASE_URL_ENV = "OPENAI_BASE_URL"  # the openai SDK's own variables
API_KEY_ENV = "OPENAI_API_KEY"
# the service's own key variable (qwen_triton.openai_api.config.API_KEY_ENV; not imported: that package
# loads FastAPI): a client on the machine that runs `make serve` finds the key there too
SERVICE_KEY_ENV = "QWEN_TRITON_API_KEY"

# GenerateRequest fields the OpenAI API has (same names there)
OPENAI_FIELDS = ("max_tokens", "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "stop")
# fields that say what to send rather than how to sample: handled by the client itself
_OWN_FIELDS = frozenset({"text", "messages", "stream", "exclude_input_in_output", "request_id"})


def default_api_key() -> str | None:
    """$OPENAI_API_KEY (the SDK's variable), else $QWEN_TRITON_API_KEY (the service's), else None."""
    return os.environ.get(API_KEY_ENV) or os.environ.get(SERVICE_KEY_ENV) or None


def default_base_url() -> str:
    """$OPENAI_BASE_URL (the SDK's variable), else the API of `make serve` on this machine."""
    return os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL


def _is_set(value: Any) -> bool:
    return value is not None and not (isinstance(value, (list, tuple)) and not value)


def openai_params(req: GenerateRequest) -> dict[str, Any]:
    """The request's sampling fields as OpenAI request parameters (those left unset are not sent).

    Raises :class:`ClientError` naming the first field that is set but has no OpenAI counterpart
    (``top_k``, ``repetition_penalty``, ``min_tokens``, ``bad_words``, ...)."""
    params: dict[str, Any] = {}
    for f in dataclasses.fields(req):
        value = getattr(req, f.name)
        if f.name in _OWN_FIELDS or not _is_set(value):
            continue
        if f.name not in OPENAI_FIELDS:
            raise ClientError(f"{f.name} is not part of the OpenAI API: leave it out, or use Triton's API "
                              "(--api triton)")
        params[f.name] = list(value) if f.name == "stop" else value
    return params


def _messages(req: GenerateRequest) -> list[dict[str, Any]]:
    messages = json.loads(req.messages) if isinstance(req.messages, str) else req.messages
    return [dict(m) for m in messages]


class OpenAIClient:
    """A client of an OpenAI-compatible API with the interface of ``HttpClient``/``GrpcClient``.

    ``model`` is the served model's name; left out, the first one ``GET /v1/models`` lists (asked once).
    ``api_key``: any text while the service has none.  One object can serve many threads (the SDK's)."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0):
        import openai  # not needed by Triton's clients: imported when this one is made

        self.base_url = base_url
        self._model = model
        self._lock = threading.Lock()
        self._sdk = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=0)

    @property
    def model(self) -> str:
        """The model requests name (looked up on the first request when not given)."""
        with self._lock:
            if self._model is None:
                with self._errors():
                    served = [m.id for m in self._sdk.models.list().data]
                if not served:
                    raise ClientError(f"{self.base_url}/models lists no model")
                self._model = served[0]
            return self._model

    def _create(self, req: GenerateRequest, stream: bool):
        params = openai_params(req)
        if stream:
            params["stream"] = True
        model = self.model
        with self._errors():
            if req.messages is not None:
                return self._sdk.chat.completions.create(model=model, messages=_messages(req), **params)
            return self._sdk.completions.create(model=model, prompt=req.text, **params)

    def generate(self, req: GenerateRequest) -> GenerateResult:
        """The whole reply (one non-streaming request)."""
        stats = RequestStats()
        reply = self._create(req, stream=False)
        choice = reply.choices[0]
        text = (choice.message.content or "") if req.messages is not None else choice.text
        stats.mark_chunk()
        stats.mark_done()
        usage = reply.usage.model_dump() if reply.usage else None
        return GenerateResult(text, [text], {"finish_reason": choice.finish_reason, "usage": usage}, stats)

    def stream(self, req: GenerateRequest) -> TextStream:
        """The reply as it arrives; ``cancel()`` or ``close()`` closes the connection (the service then
        cancels the engine request)."""
        stats = RequestStats()
        raw = self._create(req, stream=True)
        closed = threading.Event()

        def cancel() -> None:
            closed.set()
            raw.close()

        return TextStream(self._chunks(raw, req.messages is not None, closed), cancel, stats)

    def _chunks(self, raw, chat: bool, closed: threading.Event) -> Iterator[Chunk]:
        try:
            with self._errors(closed):
                for event in raw:
                    if not event.choices:
                        continue
                    choice = event.choices[0]
                    text = (choice.delta.content or "") if chat else choice.text
                    yield [text], ({"finish_reason": choice.finish_reason} if choice.finish_reason else {})
        finally:
            raw.close()

    def _errors(self, closed: threading.Event | None = None) -> _SdkErrors:
        return _SdkErrors(self.base_url, closed)


class _SdkErrors:
    """A context manager that turns the SDK's exceptions into this library's (``closed`` set: a stream
    this client closed itself, whose reader's error is the expected end, not a failure)."""

    def __init__(self, base_url: str, closed: threading.Event | None):
        self.base_url, self.closed = base_url, closed

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        import openai

        if exc is None or not isinstance(exc, Exception):
            return False
        if self.closed is not None and self.closed.is_set():
            return True  # the stream was cancelled: reading the closed connection fails, as it should
        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            raise ServerError(str(body.get("message") or exc.message), exc.status_code) from None
        if isinstance(exc, openai.APIConnectionError):
            raise ClientError(f"cannot reach the OpenAI API at {self.base_url}: {exc}") from None
        if isinstance(exc, openai.APIError):  # an error event inside a stream
            raise ServerError(exc.message, 200) from None
        return False

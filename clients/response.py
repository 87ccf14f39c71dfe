"""The reply: timing (:class:`RequestStats`), the whole reply (:class:`GenerateResult`), a streaming reply
as it arrives (:class:`TextStream`), and the decoding both transports share (output tensors to text and
values, Server-Sent Events to JSON objects with this library's errors)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qwen_triton import wire
from qwen_triton.serving import contract as c

from .base import ClientError, ServerError

if TYPE_CHECKING:
    from typing_extensions import Self

OUTPUT_NAMES = frozenset(spec.name for spec in c.ENSEMBLE_OUTPUTS)


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
Chunk = tuple[list[str], dict[str, Any]]


class TextStream(Iterator[str]):
    """Text chunks of one streaming request, as they arrive (empty chunks are skipped).

    ``text`` accumulates what was yielded, ``stats`` times it, ``outputs`` holds the last response's other
    tensors.  ``cancel()`` (any thread) asks the server to stop; iteration then ends quietly with
    ``cancelled`` set.  Closing the stream (or leaving a ``with`` block) early cancels it too.
    Errors raise :class:`ServerError` from ``next()``."""

    def __init__(self, chunks: Iterator[Chunk], cancel: Callable[[], None], stats: RequestStats,
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


# ------------------------------------------------------------------------------------- decoding, shared
def texts_of(value: Any) -> list[str]:
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
            out.extend(texts_of(item))
        elif isinstance(item, bytes):
            out.append(item.decode("utf-8", errors="replace"))
        else:
            out.append(str(item))
    return out


def flat_output(arr: np.ndarray | None) -> Any:
    """A gRPC output tensor the way the HTTP generate extension writes it: one element as a scalar, more
    as a flat list (the batch dimension of 1 is gone either way)."""
    if arr is None:
        return None
    flat = arr.reshape(-1).tolist()
    return flat[0] if len(flat) == 1 else flat


def collect(chunks: Iterable[Chunk]) -> tuple[list[str], dict[str, Any]]:
    """Chunks accumulated: each sequence's whole text, and the last value of every other output."""
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


def split_outputs(obj: Mapping[str, Any]) -> Chunk:
    """One JSON response of /generate(_stream) -> (texts, other outputs)."""
    other = {k: v for k, v in obj.items() if k in OUTPUT_NAMES and k != c.TEXT_OUTPUT}
    return texts_of(obj.get(c.TEXT_OUTPUT)), other

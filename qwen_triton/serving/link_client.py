"""An entry model's end of the engine link (link_wire.py): one connection per instance of the engine model,
opened on first use and opened again once the engine is back after a restart.

Each connection has a reader thread that hands every message to the waiting request's queue by request id.
`call` yields a request's events: accepted, its responses, then one that ends it (the final response, an
error, cancelled, or gone). When the connection ends, every request waiting on it gets a `gone` event at
once, naming the cause: the engine process died (the connection ended without a word), or the reason the
engine gave when it closed the link (unloaded). While no engine can be reached, `call` yields `gone` at
once. The entry model also watches the engine's pid file (engine_watch.py): a second signal.
"""
from __future__ import annotations

import logging
import queue
import socket
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import link_wire as w

log = logging.getLogger(__name__)

GONE = "gone"  # the event of a request whose engine went away (or was never reachable)
_ENDS = frozenset((w.ERROR, w.CANCELLED, GONE))
_PEERCRED = struct.Struct("3i")  # pid, uid, gid of the process at the other end (SO_PEERCRED)


@dataclass(frozen=True)
class LinkEvent:
    """What the engine said about one request: kind is accepted, response, error, cancelled or gone."""

    kind: str
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    final: bool = False  # a response that ends the request
    code: str = ""  # error: Triton's error code name (INVALID_ARG, INTERNAL, ...)
    message: str = ""  # error, gone: what happened

    @property
    def ends(self) -> bool:
        return self.kind in _ENDS or (self.kind == w.RESPONSE and self.final)


def _event(message: w.Message) -> LinkEvent:
    f = message.fields
    if message.op == w.RESPONSE:
        return LinkEvent(w.RESPONSE, dict(message.arrays), final=f.get("final") is True)
    if message.op == w.ERROR:
        return LinkEvent(w.ERROR, code=str(f.get("code") or "INTERNAL"), message=str(f.get("message", "")))
    return LinkEvent(message.op)


class _Connection:
    """One connection to one engine instance; `gone` is why it ended (None while it serves)."""

    def __init__(self, path: Path, name: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(str(path))
            self.pid = _PEERCRED.unpack(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             _PEERCRED.size))[0]
        except OSError:
            self.sock.close()
            raise
        self.gone: str | None = None
        self._shut_reason: str | None = None  # we closed it ourselves, and why
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._waiting: dict[str, queue.SimpleQueue[LinkEvent]] = {}
        threading.Thread(target=self._read_loop, name=f"{name}-link", daemon=True).start()

    def open(self, rid: str) -> queue.SimpleQueue[LinkEvent] | None:
        """The queue of a new request's events; None once the connection has ended."""
        with self._lock:
            if self.gone is not None:
                return None
            events = self._waiting[rid] = queue.SimpleQueue()
            return events

    def forget(self, rid: str) -> None:
        with self._lock:
            self._waiting.pop(rid, None)

    def load(self) -> int:
        with self._lock:
            return len(self._waiting)

    def carries(self, rid: str) -> bool:
        with self._lock:
            return rid in self._waiting

    def send(self, message: w.Message) -> None:
        """Write one message; a failed write ends the connection (the reader reports it)."""
        frame = w.encode(message)
        with self._write_lock:
            try:
                self.sock.sendall(frame)
            except OSError:
                self.shut()

    def shut(self, reason: str | None = None) -> None:
        self._shut_reason = self._shut_reason or reason
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_loop(self) -> None:
        stream, reason = self.sock.makefile("rb"), None
        try:
            while (message := w.read_message(stream, w.ENGINE_OPS)) is not None:
                if message.op == w.CLOSING:
                    reason = str(message.fields.get("reason") or "the engine closed the link")
                    continue
                event = _event(message)
                with self._lock:
                    events = self._waiting.get(message.id)
                    if events is not None and event.ends:
                        del self._waiting[message.id]
                if events is not None:
                    events.put(event)
        except w.LinkError as exc:
            reason = f"the engine link broke: {exc}"
        except OSError:
            pass
        finally:
            self._end(reason or self._shut_reason or f"the engine process (pid {self.pid}) died")
            with self._write_lock:
                stream.close()
                self.sock.close()

    def _end(self, reason: str) -> None:
        with self._lock:
            self.gone = reason
            waiting, self._waiting = self._waiting, {}
        if waiting:
            log.error("engine link: %s; ending %d requests", reason, len(waiting))
        for events in waiting.values():
            events.put(LinkEvent(GONE, message=reason))


class LinkClient:
    """The link from one entry model process (`name` names its threads) to every instance of the engine
    model `model` whose pid file is in `run_dir` (engine_watch.py)."""

    def __init__(self, run_dir: Path, model: str, name: str = "entry"):
        self.run_dir, self.model, self.name = Path(run_dir), model, name
        self._lock = threading.Lock()
        self._connections: dict[Path, _Connection] = {}
        self._instances = 0  # engine instances found last time

    def call(self, rid: str, arrays: Mapping[str, np.ndarray], client_id: str = "") -> Iterator[LinkEvent]:
        """Submit a request (`rid` unique among this process's requests; `client_id` is what `stop`
        names, rid by default) and yield its events up to the one that ends it."""
        conn, why = self._connection()
        events = conn.open(rid) if conn is not None else None
        if events is None:
            yield LinkEvent(GONE, message=why or str(conn.gone))
            return
        ended = False
        try:
            try:
                conn.send(w.Message(w.SUBMIT, rid, {"client_id": client_id or rid}, arrays))
            except w.LinkError as exc:
                ended = True
                yield LinkEvent(w.ERROR, code="INTERNAL", message=f"engine link: {exc}")
                return
            while not ended:
                event = events.get()
                ended = event.ends
                yield event
        finally:
            conn.forget(rid)
            if not ended and conn.gone is None:  # left before its end: nobody reads the rest
                conn.send(w.Message(w.CANCEL, rid))

    def stop(self, client_id: str) -> None:
        """tensorrtllm_backend's stop: the engine ends the requests sent under `client_id` normally."""
        for conn in self._live():
            conn.send(w.Message(w.STOP, fields={"client_id": client_id}))

    def cancel(self, rid: str) -> None:
        """Abort request `rid`: it ends with a cancelled event."""
        for conn in self._live():
            if conn.carries(rid):
                conn.send(w.Message(w.CANCEL, rid))

    def close(self, reason: str = "the entry model is being unloaded") -> None:
        for conn in self._live():
            conn.shut(reason)

    def _live(self) -> list[_Connection]:
        with self._lock:
            return [conn for conn in self._connections.values() if conn.gone is None]

    def _connection(self) -> tuple[_Connection | None, str]:
        """The least loaded live connection, connecting first where an instance has none; else None and
        why no engine can be reached."""
        with self._lock:
            live = [conn for conn in self._connections.values() if conn.gone is None]
            why = ""
            if len(live) < max(self._instances, 1):
                why = self._discover()
                live = list(self._connections.values())
        return (min(live, key=_Connection.load), "") if live else (None, why)

    def _discover(self) -> str:
        """Connect to every instance of the engine that has no live connection; drop ended ones."""
        prefix = f"{self.model}-"
        instances = sorted(p.name[len(prefix):-len(".pid")] for p in self.run_dir.glob(f"{prefix}*.pid"))
        self._instances = len(instances)
        self._connections = {p: conn for p, conn in self._connections.items() if conn.gone is None}
        why = f"the engine is not running (no {self.model} process in {self.run_dir})"
        for instance in instances:
            path = w.link_path(self.run_dir, self.model, instance)
            if path in self._connections:
                continue
            try:
                self._connections[path] = _Connection(path, self.name)
            except OSError as exc:
                why = f"the engine is not reachable ({path.name}: {exc.strerror or exc})"
        return why

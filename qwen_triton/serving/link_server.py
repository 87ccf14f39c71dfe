"""The engine's end of the engine link: our entry models' requests over a Unix socket (link_wire.py).

The engine model (model_repo/tensorrt_llm/1/model.py) starts a LinkServer beside its EngineService and
closes it in finalize. Each connection (one per entry model process) has a reader thread, which turns
`submit`, `stop` and `cancel` messages into EngineService calls, and is one caller of the service: its
responses go out on its own sender lane (send_lanes.py), so a connection that stops reading holds up no
other. A connection that ends (its process died, EOF) or fails a write is closed and its requests are
aborted at once (EngineService.drop_caller). A message that is not well formed closes only its connection.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

from ..errors import QwenTritonError
from . import link_wire as w
from .engine_response import EngineResponse
from .engine_service import EngineService
from .triton_io import error_code

log = logging.getLogger(__name__)


class _Connection:
    """One entry model's connection: its number (the service's caller), socket and write lock."""

    def __init__(self, number: int, sock: socket.socket):
        self.number, self.sock = number, sock
        self.closed = False
        self._write_lock = threading.Lock()
        self.reader: threading.Thread | None = None

    def write(self, message: w.Message) -> bool:
        """Send one message; False (and the connection shut down) when it cannot go: its reader ends and
        the caller's requests are dropped. LinkError for a message that cannot be encoded."""
        frame = w.encode(message)
        with self._write_lock:
            if self.closed:
                return False
            try:
                self.sock.sendall(frame)
                return True
            except OSError as exc:
                log.warning("engine link %d: a write failed (%s); closing it", self.number, exc)
        self.shut()
        return False

    def shut(self, reason: str | None = None) -> None:
        """End the connection from any thread (the reader then closes it); `reason` is sent first,
        without waiting, to tell the client that the engine closes it on purpose."""
        # never behind a write under way (a frame cut in two), never waiting: at worst the client sees EOF
        if reason is not None and not self.closed and self._write_lock.acquire(blocking=False):
            try:
                self.sock.send(w.encode(w.Message(w.CLOSING, fields={"reason": reason})), socket.MSG_DONTWAIT)
            except OSError:
                pass
            finally:
                self._write_lock.release()
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class LinkServer:
    """Serves `service` on a Unix socket at `path` (link_wire.link_path), readable by this user only."""

    def __init__(self, service: EngineService, path: Path):
        self.service, self.path = service, Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a stale socket of an engine process that died
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        os.chmod(self.path, 0o600)  # before listen(): nobody else ever connects
        self._inode = self.path.stat().st_ino  # ours, until a reloaded instance binds the same path
        self._listener.listen(64)
        self._lock = threading.Lock()
        self._connections: dict[int, _Connection] = {}
        self._closing = False
        self._accepter = threading.Thread(target=self._accept_loop, name="qwen-triton-link", daemon=True)
        self._accepter.start()

    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def close(self, reason: str = "the engine model is being unloaded") -> None:
        """Stop accepting, tell every client `reason` and close its connection (its requests are
        aborted), remove the socket file."""
        self._closing = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._accepter.join(timeout=5)
        with self._lock:
            connections = list(self._connections.values())
        for conn in connections:
            conn.shut(reason)
        for conn in connections:  # their requests are aborted before the service is shut down
            conn.reader.join(timeout=5)
        try:  # a new instance of a reloaded model may already serve at this path: leave its socket
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed
            conn = _Connection(self.service.new_caller(), sock)
            conn.reader = threading.Thread(target=self._serve, args=(conn,), name=f"qwen-triton-link-{conn.number}",
                                           daemon=True)
            with self._lock:
                self._connections[conn.number] = conn
            conn.reader.start()

    def _serve(self, conn: _Connection) -> None:
        """The connection's reader: every message in order, until it ends; then its requests go."""
        stream = conn.sock.makefile("rb")
        try:
            while (message := w.read_message(stream, w.CLIENT_OPS)) is not None:
                self._handle(conn, message)
        except w.LinkError as exc:
            log.error("engine link %d: %s; closing it", conn.number, exc)
            conn.shut(f"the engine closed the link: {exc}")
        except OSError:
            pass  # shut down by a failed write or by close()
        finally:
            conn.shut()
            with conn._write_lock:  # no write is under way on the socket being closed
                stream.close()
                conn.sock.close()
            with self._lock:
                self._connections.pop(conn.number, None)
            self.service.drop_caller(conn.number)

    def _handle(self, conn: _Connection, message: w.Message) -> None:
        if message.op == w.SUBMIT:
            self._submit(conn, message)
        elif message.op == w.STOP:
            self.service.stop(str(message.fields.get("client_id", "")))
        else:  # CANCEL
            self.service.cancel(_key(conn, message.id))

    def _submit(self, conn: _Connection, message: w.Message) -> None:
        rid = message.id

        def send(response: EngineResponse) -> None:
            try:
                conn.write(response_message(rid, response))
            except w.LinkError as exc:  # this response cannot go: the request fails, the link stays
                conn.write(w.Message(w.ERROR, rid, {"code": "INTERNAL", "message": f"engine link: {exc}"}))
                raise

        try:
            self.service.submit(_key(conn, rid), message.arrays, send,
                                client_id=str(message.fields.get("client_id", "")),
                                accepted=lambda: conn.write(w.Message(w.ACCEPTED, rid)), caller=conn.number)
        except QwenTritonError as exc:
            conn.write(w.Message(w.ERROR, rid, {"code": error_code(exc), "message": str(exc)}))
        except Exception as exc:  # never end the engine on a request
            log.exception("engine link %d: submitting %s failed", conn.number, rid)
            conn.write(w.Message(w.ERROR, rid, {"code": "INTERNAL", "message": f"engine error: {exc}"}))


def _key(conn: _Connection, rid: str) -> str:
    """The service's key of a link request: ids are the client's, unique per connection."""
    return f"link{conn.number}-{rid}"


def response_message(rid: str, response: EngineResponse) -> w.Message:
    """One EngineResponse of request `rid` as a message: response, error or cancelled."""
    if response.cancelled:
        return w.Message(w.CANCELLED, rid)
    if response.error is not None:
        return w.Message(w.ERROR, rid, {"code": "INTERNAL", "message": response.error})
    return w.Message(w.RESPONSE, rid, {"final": response.final}, response.arrays or {})

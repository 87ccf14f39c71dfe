"""The engine link's wire: where its socket lives and what goes over it.

The engine link is how our entry models reach our engine (link_server.py in the engine's process,
link_client.py in each entry model's): a Unix stream socket instead of Triton's BLS, whose decoupled
response path crashed the entry models' stub processes under a few hundred concurrent streams (GPU soak,
docs/reliability.md).

One message is a 4-byte big-endian length N, N bytes of a JSON header, then the raw bytes of each array the
header lists, in order:

    {"op": "submit", "id": "...", "fields": {...}, "arrays": [{"name", "dtype", "shape", "nbytes"}, ...]}

A numeric array goes as its little-endian C-order bytes; a BYTES array (numpy object, bytes or str) as each
element's 4-byte big-endian length and bytes, in C order; it arrives as an object array of bytes. Nothing is
pickled. What is not well formed (bad JSON, an unknown op or dtype, sizes that do not add up, over the
limits, a connection that ends inside a message) raises LinkError; the reader then closes that connection.

Ops, client -> engine: submit {id, client_id, arrays}, stop {client_id}, cancel {id}.
Engine -> client: accepted {id}, response {id, final, arrays}, error {id, code, message} (ends the request),
cancelled {id} (ends it), closing {reason} (the engine is closing this connection on purpose).
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

SUBMIT, STOP, CANCEL = "submit", "stop", "cancel"
ACCEPTED, RESPONSE, ERROR, CANCELLED, CLOSING = "accepted", "response", "error", "cancelled", "closing"
CLIENT_OPS = frozenset((SUBMIT, STOP, CANCEL))
ENGINE_OPS = frozenset((ACCEPTED, RESPONSE, ERROR, CANCELLED, CLOSING))

MAX_HEADER_BYTES = 1 << 20
MAX_BODY_BYTES = 1 << 30  # one message's arrays (a non-streaming reply with generation logits can be large)
_MAX_NDIM = 8
_LEN = struct.Struct(">I")
BYTES = "bytes"  # the dtype name of a BYTES array
_NUMERIC = {name: np.dtype(name).newbyteorder("<") for name in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64")}
_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL


class LinkError(ValueError):
    """A message that is not well formed, or a connection that ended inside one."""


@dataclass(frozen=True)
class Message:
    """One message. `fields` hold JSON values (client_id, final, code, message, reason)."""

    op: str
    id: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)


def link_path(run_dir: Path, model: str, instance: str) -> Path:
    """The socket of one instance of the engine model, beside its pid file in the run directory
    (engine_watch.run_dir); a path too long for a Unix socket moves to the temp folder under a digest."""
    path = Path(run_dir) / f"{model}-{instance}.sock"
    if len(str(path).encode()) <= _UNIX_PATH_MAX:
        return path
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"qwen-triton-link-{digest}.sock"


# -- encoding -------------------------------------------------------------------------------------------

def encode(message: Message) -> bytes:
    """The whole message as bytes. LinkError for an array that cannot go (a BYTES element that is not
    bytes or text, an unsupported dtype) and for a message over the limits."""
    descriptors, blobs = [], []
    for name, array in message.arrays.items():
        dtype, blob = _array_bytes(name, np.asarray(array))
        descriptors.append({"name": name, "dtype": dtype, "shape": list(np.shape(array)), "nbytes": len(blob)})
        blobs.append(blob)
    header = json.dumps({"op": message.op, "id": message.id, "fields": dict(message.fields),
                         "arrays": descriptors}, separators=(",", ":")).encode()
    if len(header) > MAX_HEADER_BYTES:
        raise LinkError(f"a {message.op} header of {len(header)} bytes is over {MAX_HEADER_BYTES}")
    body = sum(len(b) for b in blobs)
    if body > MAX_BODY_BYTES:
        raise LinkError(f"a {message.op} message of {body} bytes of arrays is over {MAX_BODY_BYTES}")
    return b"".join([_LEN.pack(len(header)), header, *blobs])


def _array_bytes(name: str, array: np.ndarray) -> tuple[str, bytes]:
    if array.dtype.kind in "OSU":
        parts = []
        for item in array.reshape(-1).tolist():
            if isinstance(item, str):
                item = item.encode("utf-8")
            if not isinstance(item, (bytes, bytearray)):
                raise LinkError(f"array {name!r} holds a {type(item).__name__}, not bytes or text")
            parts += [_LEN.pack(len(item)), bytes(item)]
        return BYTES, b"".join(parts)
    dtype = _NUMERIC.get(array.dtype.name)
    if dtype is None:
        raise LinkError(f"array {name!r} has dtype {array.dtype}, which the link does not carry")
    return array.dtype.name, np.ascontiguousarray(array, dtype=dtype).tobytes()


# -- decoding -------------------------------------------------------------------------------------------

def read_message(stream: BinaryIO, ops: frozenset[str] = CLIENT_OPS | ENGINE_OPS,
                 max_body: int = MAX_BODY_BYTES) -> Message | None:
    """The next message of a buffered binary stream (a socket's makefile("rb")); None at the end of the
    stream between messages. LinkError for anything not well formed, or an op not in `ops`."""
    prefix = stream.read(_LEN.size)
    if not prefix:
        return None
    (size,) = _LEN.unpack(_exactly(stream, _LEN.size - len(prefix), prefix))
    if size > MAX_HEADER_BYTES:
        raise LinkError(f"a header of {size} bytes is over {MAX_HEADER_BYTES}")
    op, rid, fields, descriptors = _header(_exactly(stream, size), ops)
    total = sum(d[3] for d in descriptors)
    if total > max_body:
        raise LinkError(f"a message of {total} bytes of arrays is over {max_body}")
    body = bytearray(total)  # the arrays are views of it: writable, one allocation per message
    view, got = memoryview(body), 0
    while got < total:
        n = stream.readinto(view[got:])
        if not n:
            raise LinkError("the connection ended inside a message")
        got += n
    arrays, offset = {}, 0
    for name, dtype, shape, nbytes in descriptors:
        arrays[name] = _array(name, dtype, shape, view[offset:offset + nbytes])
        offset += nbytes
    return Message(op, rid, fields, arrays)


def _exactly(stream: BinaryIO, n: int, prefix: bytes = b"") -> bytes:
    data = prefix + (stream.read(n) if n else b"")
    if len(data) != len(prefix) + n:
        raise LinkError("the connection ended inside a message")
    return data


def _header(raw: bytes, ops: frozenset[str]) -> tuple[str, str, dict, list]:
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LinkError(f"a header that is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise LinkError("a header that is not a JSON object")
    op, rid, fields = header.get("op"), header.get("id", ""), header.get("fields", {})
    if op not in ops:
        raise LinkError(f"unknown op {op!r}")
    if not isinstance(rid, str) or not isinstance(fields, dict):
        raise LinkError("a header whose id is not a string or whose fields are not an object")
    descriptors = header.get("arrays", [])
    if not isinstance(descriptors, list):
        raise LinkError("a header whose arrays are not a list")
    return op, rid, fields, [_descriptor(d) for d in descriptors]


def _descriptor(d: Any) -> tuple[str, str, tuple[int, ...], int]:
    if not isinstance(d, dict):
        raise LinkError("an array descriptor that is not an object")
    name, dtype, shape, nbytes = d.get("name"), d.get("dtype"), d.get("shape"), d.get("nbytes")
    if not isinstance(name, str) or (dtype != BYTES and dtype not in _NUMERIC):
        raise LinkError(f"array {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or len(shape) > _MAX_NDIM or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise LinkError(f"array {name!r}: bad shape {shape!r}")
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
        raise LinkError(f"array {name!r}: bad size {nbytes!r}")
    count = math.prod(shape)
    need = count * _NUMERIC[dtype].itemsize if dtype != BYTES else None
    if (need is not None and need != nbytes) or (need is None and count * _LEN.size > nbytes):
        raise LinkError(f"array {name!r}: {nbytes} bytes cannot hold shape {shape} of {dtype}")
    return name, dtype, tuple(shape), nbytes


def _array(name: str, dtype: str, shape: tuple[int, ...], data: memoryview) -> np.ndarray:
    if dtype != BYTES:
        array = np.frombuffer(data, dtype=_NUMERIC[dtype]).reshape(shape)
        return array if array.flags.aligned else array.copy()  # no padding on the wire
    count, items, offset = math.prod(shape), [], 0
    for _ in range(count):
        if offset + _LEN.size > len(data):
            raise LinkError(f"array {name!r}: its elements overrun its {len(data)} bytes")
        (n,) = _LEN.unpack_from(data, offset)
        offset += _LEN.size
        if offset + n > len(data):
            raise LinkError(f"array {name!r}: its elements overrun its {len(data)} bytes")
        items.append(bytes(data[offset:offset + n]))
        offset += n
    if offset != len(data):
        raise LinkError(f"array {name!r}: {len(data) - offset} bytes left after its {count} elements")
    out = np.empty(count, dtype=np.object_)
    out[:] = items
    return out.reshape(shape)

"""The wire format of the served models, defined once for every client of them (clients/, loadtest/,
tools/, tests/): what goes over Triton's HTTP, gRPC and metrics ports besides the tensor names, which
are ``qwen_triton.serving.contract``'s.

* dtypes: Triton's dtype names <-> numpy dtypes and Python types; the numpy array of one input
  (batch of one: a scalar is ``[1, 1]``, a list ``[1, N]``) and its raw little-endian content;
* Server-Sent Events of ``/generate_stream`` -> JSON events, ``data: {"error": ...}`` included;
* error bodies (JSON ``{"error": ...}``, an SSE error event, or plain text) and ``/generate`` replies;
* ports: the defaults 8000 / 8001 / 8002, ``TRITON_HTTP_PORT`` / ``TRITON_GRPC_PORT`` /
  ``TRITON_METRICS_PORT``, ``host:port`` parsing;
* readiness (``/v2/health/ready``, ``/v2/models/<model>/ready``) over plain urllib;
* Prometheus text of the metrics port -> {family: {labels: value}}, whatever the label set.

The standard library and numpy only (importable in any of the project's environments); no state.
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

if TYPE_CHECKING:
    from .serving.contract import TensorSpec

# ------------------------------------------------------------------------------------------------ dtypes
NUMPY_DTYPES: Mapping[str, type] = MappingProxyType({
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
})
PYTHON_TYPES: Mapping[str, Callable[[Any], Any]] = MappingProxyType({
    name: (bool if name == "BOOL" else str if name == "BYTES" else float if name.startswith("FP") else int)
    for name in NUMPY_DTYPES
})

# gRPC stream parameters: the end of a request's responses, and asking for it even with no data.
FINAL_RESPONSE = "triton_final_response"
ENABLE_EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"


def triton_dtype(dtype: Any) -> str:
    """Triton's dtype name of a numpy dtype (object, bytes and str arrays are BYTES)."""
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return "BYTES"
    for name, numpy_type in NUMPY_DTYPES.items():
        if numpy_type is not np.object_ and np.dtype(numpy_type) == dt:
            return name
    raise ValueError(f"no Triton dtype for numpy dtype {dt}")


def _is_scalar(spec: TensorSpec) -> bool:
    return tuple(spec.dims) == (1,)


def python_value(spec: TensorSpec, value: Any) -> Any:
    """``value`` as the HTTP generate extension's JSON carries it for ``spec``: one value of the dtype's
    Python type, or a list of them for a list input (dims other than ``(1,)``)."""
    convert = PYTHON_TYPES[spec.dtype]
    if _is_scalar(spec):
        return convert(value)
    return [convert(v) for v in value]


def _utf8(value: Any) -> bytes:
    return bytes(value) if isinstance(value, (bytes, bytearray)) else str(value).encode("utf-8")


def to_array(spec: TensorSpec, value: Any, batched: bool = True) -> np.ndarray:
    """The numpy array of one input of ``spec``'s dtype: a scalar becomes ``[1, 1]``, a list ``[1, N]``
    (``[1]`` / ``[N]`` with ``batched=False``); BYTES elements are UTF-8 encoded (bytes pass as is)."""
    items = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if spec.dtype == "BYTES":
        flat = np.asarray(items, dtype=np.object_)
        arr = np.array([_utf8(v) for v in flat.reshape(-1)], dtype=np.object_).reshape(flat.shape)
    else:
        arr = np.asarray(items, dtype=NUMPY_DTYPES[spec.dtype])
    return arr[None, ...] if batched else arr


def raw_contents(arr: np.ndarray) -> bytes:
    """An array's content as Triton's raw tensor format wants it (gRPC ``raw_input_contents``): little
    endian, row major; each BYTES element as a 4-byte little-endian length and its bytes."""
    if arr.dtype.kind in "OSU":
        return b"".join(struct.pack("<I", len(b)) + b for b in (_utf8(v) for v in arr.reshape(-1)))
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


# ------------------------------------------------------------------------------- replies, SSE and errors
class WireError(ValueError):
    """A reply that does not follow the wire format (not JSON, not a JSON object)."""


class ErrorReply(Exception):
    """The server's error object (``{"error": ...}``) as an exception; ``message`` is its text."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def generate_path(model: str, stream: bool = False) -> str:
    """The path of Triton's generate extension for ``model``: ``/generate`` or ``/generate_stream``."""
    return f"/v2/models/{model}/generate{'_stream' if stream else ''}"


def _text(data: bytes | bytearray | str) -> str:
    return data.decode("utf-8", errors="replace") if isinstance(data, (bytes, bytearray)) else data


def _json_object(payload: bytes | bytearray | str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except ValueError:
        raise WireError(f"malformed {what}, not JSON: {payload[:200]!r}") from None
    if not isinstance(obj, dict):
        raise WireError(f"{what} is not a JSON object: {payload[:200]!r}")
    return obj


def parse_sse(lines: Iterable[bytes | bytearray | str], raise_errors: bool = False) -> Iterator[dict[str, Any]]:
    """Server-Sent Events (lines, with or without their line ends) -> their JSON ``data`` objects.

    Multi-line data is joined with newlines, comments (``:``) and other fields are ignored, a blank line
    ends an event and so does the end of input; an event with empty data is none.  Data that is not a
    JSON object raises :class:`WireError`.  An error event (``data: {"error": ...}``) is yielded as it is,
    or raised as :class:`ErrorReply` with ``raise_errors``.  Lines are read as they arrive."""
    data: list[str] = []
    for raw in itertools.chain(lines, [""]):  # the end of input ends the last event
        line = _text(raw).rstrip("\r\n")
        if line:
            name, _, value = line.partition(":")
            if name == "data":  # a comment has an empty name
                data.append(value.removeprefix(" "))
            continue
        payload = "\n".join(data)
        data.clear()
        if not payload:  # no data, or only empty data: no event (as a browser's EventSource does)
            continue
        event = _json_object(payload, "server-sent event")
        if raise_errors and "error" in event:
            raise ErrorReply(str(event["error"]))
        yield event


def parse_reply(body: bytes | bytearray | str) -> dict[str, Any]:
    """The JSON object of a ``/generate`` reply.  ``{"error": ...}`` (Triton answers 200 with it when the
    model sent several responses) raises :class:`ErrorReply`; anything but a JSON object, :class:`WireError`."""
    obj = _json_object(body, "reply")
    if "error" in obj:
        raise ErrorReply(str(obj["error"]))
    return obj


def error_message(body: bytes | bytearray | str) -> str:
    """The server's message in an error body: JSON ``{"error": ...}``, an SSE ``data: {"error": ...}``
    event (``/generate_stream`` rejecting a request), else the text itself."""
    text = _text(body).strip()
    try:
        obj = json.loads(text)
        if isinstance(obj, dict) and "error" in obj:
            return str(obj["error"])
    except ValueError:
        pass
    try:
        for event in parse_sse(text.splitlines()):
            if "error" in event:
                return str(event["error"])
    except WireError:
        pass
    return text or "(empty error body)"


# ------------------------------------------------------------------------------------------------ ports
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType({"http": 8000, "grpc": 8001, "metrics": 8002})
PORT_ENV: Mapping[str, str] = MappingProxyType(
    {"http": "TRITON_HTTP_PORT", "grpc": "TRITON_GRPC_PORT", "metrics": "TRITON_METRICS_PORT"})


def env_port(kind: str, environ: Mapping[str, str] | None = None) -> int:
    """The port of ``kind`` ("http", "grpc" or "metrics"): ``TRITON_<KIND>_PORT`` when set and not empty,
    else Triton's default (8000 / 8001 / 8002)."""
    value = (os.environ if environ is None else environ).get(PORT_ENV[kind])
    return int(value) if value else DEFAULT_PORTS[kind]


def split_url(url: str, default_port: int) -> tuple[str, int, str]:
    """``host:port``, ``http(s)://host:port`` or ``grpc://host:port`` -> (host, port, scheme); the scheme
    is "http" when none is given and the port ``default_port``."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if not parts.hostname:
        raise ValueError(f"no host in url {url!r}")
    return parts.hostname, parts.port or default_port, parts.scheme


def _http_base(url: str) -> str:
    return (url if "://" in url else "http://" + url).rstrip("/")


# ------------------------------------------------------------------------------------------- readiness
def http_get(url: str, timeout: float = 2.0, data: bytes | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET (a POST of ``data`` when given), straight to the server (no proxy from the
    environment, as the clients connect); status 0 when nothing answered."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                     headers={} if data is None else {"Content-Type": "application/json"})
    try:
        with opener.open(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, http.client.HTTPException):  # URLError, refused, timed out, not HTTP
        return 0, b""


def http_post(url: str, payload: Any = None, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a JSON POST (``payload`` None: an empty body); status 0 when nothing answered."""
    return http_get(url, timeout, data=b"" if payload is None else json.dumps(payload).encode())


def is_ready(url: str, model: str | None = None, timeout: float = 2.0) -> bool:
    """True when Triton at ``url`` (its HTTP port: ``host:port`` or ``http://host:port``) answers 200 to
    ``/v2/health/ready``, or with ``model`` to ``/v2/models/<model>/ready``."""
    path = "/v2/health/ready" if model is None else f"/v2/models/{model}/ready"
    return http_get(_http_base(url) + path, timeout)[0] == 200


def wait_ready(url: str, timeout_s: float, model: str | None = None, interval_s: float = 0.5) -> bool:
    """Poll :func:`is_ready` until it is true (True) or ``timeout_s`` has passed (False).  Sleeps with
    ``time.sleep``, so under gevent's monkey patching it yields to other greenlets."""
    deadline = time.monotonic() + timeout_s
    while True:
        if is_ready(url, model):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


# ------------------------------------------------------------------------------------------ Prometheus
Labels = tuple[tuple[str, str], ...]  # sorted (label, value) pairs; dict(labels) is the label dict
IDENTITY_LABELS = ("model", "version")  # which model a series is of (Triton's and tensorrtllm_backend's)
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|(?=\}))')
_CLOSE = re.compile(r"\s*\}")
_ESCAPE = re.compile(r"\\(.)")


def _sample(line: str) -> tuple[str, Labels, float] | None:
    """One sample line -> (family, labels, value); None for comments and lines that are not samples."""
    name = _NAME.match(line)
    if line.startswith("#") or name is None:
        return None
    rest, labels = line[name.end():], []
    if rest.startswith("{"):
        pos = 1
        while (close := _CLOSE.match(rest, pos)) is None:
            label = _LABEL.match(rest, pos)
            if label is None:
                return None
            value = _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), label.group(2))
            labels.append((label.group(1), value))
            pos = label.end()
        rest = rest[close.end():]
    fields = rest.split()  # the value, then an optional timestamp
    try:
        return name.group(), tuple(sorted(labels)), float(fields[0])
    except (IndexError, ValueError):
        return None


def parse_metrics(text: str) -> dict[str, dict[Labels, float]]:
    """Prometheus text -> {family: {labels: value}}, labels as sorted (name, value) pairs, any set of
    them; a histogram's or summary's ``_bucket`` / ``_sum`` / ``_count`` are families of their own.
    Comments and lines that are not samples are skipped."""
    families: dict[str, dict[Labels, float]] = {}
    for line in text.splitlines():
        sample = _sample(line.strip())
        if sample is not None:
            families.setdefault(sample[0], {})[sample[1]] = sample[2]
    return families


def metric_series(families: Mapping[str, Mapping[Labels, float]], family: str, /,
                  **match: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every series of ``family`` whose labels include ``match``."""
    out = []
    for labels, value in families.get(family, {}).items():
        found = dict(labels)
        if all(found.get(k) == v for k, v in match.items()):
            out.append((found, value))
    return out


def metric_values(families: Mapping[str, Mapping[Labels, float]], family: str, label: str | None = None, /,
                  **match: str) -> dict[str, float]:
    """{value of ``label``: value} of the series of ``family`` that match (see :func:`metric_series`).
    ``label=None``: each series' one label besides ``model`` and ``version`` (e.g. ``request_type`` of
    ``nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"}``); series
    without it are left out.  Give ``model=`` when several models export the family."""
    out = {}
    for labels, value in metric_series(families, family, **match):
        if label is None:
            keys = [k for k in labels if k not in IDENTITY_LABELS]
            key = labels[keys[0]] if len(keys) == 1 else None
        else:
            key = labels.get(label)
        if key is not None:
            out[key] = value
    return out


def fetch_metrics(url: str, timeout: float = 5.0) -> dict[str, dict[Labels, float]] | None:
    """One scrape of Triton's metrics port (``url``: ``http://host:port/metrics``), parsed; None when it
    did not answer 200."""
    status, body = http_get(url, timeout)
    if status != 200:
        return None
    return parse_metrics(body.decode("utf-8", errors="replace"))

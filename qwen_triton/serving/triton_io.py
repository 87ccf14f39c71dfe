"""Small Triton-free helpers the model.py files share: reading a request's
inputs by contract name, the models' `parameters`, and BYTES tensors."""
from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import EngineDeadError, InvalidRequestError, QwenTritonError
from .contract import TensorSpec

log = logging.getLogger(__name__)

Arrays = Mapping[str, np.ndarray]  # a request's or response's tensors by contract name

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # what an INT32 tensor can carry


def read_inputs(specs: Iterable[TensorSpec], get: Callable[[str], Any]) -> dict[str, np.ndarray]:
    """{name: array} of the inputs present; `get(name)` returns a tensor with
    `.as_numpy()` (pb_utils.Tensor) or None."""
    out = {}
    for spec in specs:
        tensor = get(spec.name)
        if tensor is not None:
            out[spec.name] = tensor.as_numpy()
    return out


def has_value(array: np.ndarray) -> bool:
    """Whether an input carries anything: a non-empty string, a non-zero number or a true flag."""
    arr = np.asarray(array)
    if arr.size == 0:
        return False
    if arr.dtype == object or arr.dtype.kind in "SU":
        return any(bool(x) for x in arr.reshape(-1))
    return bool(np.any(arr != 0))


def reject_unsupported(specs: Iterable[TensorSpec], inputs: Arrays) -> None:
    """InvalidRequestError for an input of a feature this engine does not have, when given a value
    (TensorSpec.unsupported says why); an empty, zero or false value of such an input is accepted."""
    for spec in specs:
        if spec.unsupported and spec.name in inputs and has_value(inputs[spec.name]):
            raise InvalidRequestError(spec.name, spec.unsupported)


class BatchRows:
    """Row i of a request's inputs, for a request of `batch` rows. Every input must have that
    batch size, or 1 (then it applies to every row)."""

    def __init__(self, inputs: Arrays, batch: int):
        self.inputs, self.batch = inputs, batch

    def array(self, name: str, row: int) -> np.ndarray | None:
        value = self.inputs.get(name)
        if value is None:
            return None
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] not in (1, self.batch):
            raise InvalidRequestError(name, f"has batch size {arr.shape[0] if arr.ndim else 0}, "
                                            f"the request has {self.batch}")
        # an array, also where a row is one element: an object array's None is a value, not a missing input
        return np.asarray(arr[row if arr.shape[0] > 1 else 0])

    def scalar(self, name: str, row: int, default=None, kind: type = int):
        """The one value of a scalar input as `kind` (int, float, bool: see `number`), or `default`."""
        arr = self.array(name, row)
        if arr is None:
            return default
        flat = np.asarray(arr).reshape(-1)
        if flat.size != 1:
            raise InvalidRequestError(name, f"must hold one value per row, got {flat.size}")
        return number(name, flat[0], kind)


def number(name: str, value: Any, kind: type = int) -> Any:
    """One value of a numeric input as `kind` (int, float, bool). InvalidRequestError for what is not a
    real number (bytes, text, None, complex), for NaN and infinity, and for an int given as a fraction."""
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        value = int(value)
    elif isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            raise InvalidRequestError(name, f"must be a finite number, got {value}")
        if kind is int and not value.is_integer():
            raise InvalidRequestError(name, f"must be an integer, got {value}")
    else:
        raise InvalidRequestError(name, f"must be a number, got {type(value).__name__}")
    try:
        return kind(value)
    except OverflowError:
        raise InvalidRequestError(name, "is out of range") from None


def integers(array: np.ndarray, name: str) -> list[int]:
    """Every value of an input as an int (flattened); InvalidRequestError as `number`."""
    flat = np.asarray(array).reshape(-1)
    if flat.dtype.kind in "biu":
        return [int(v) for v in flat.tolist()]
    return [number(name, v, int) for v in flat.tolist()]


def reals(array: np.ndarray, name: str) -> np.ndarray:
    """Every value of an input as float64 (flattened; NaN and infinity are kept for the caller to judge).
    InvalidRequestError for values that are not real numbers."""
    flat = np.asarray(array).reshape(-1)
    if flat.size == 0:
        return np.zeros(0)
    if flat.dtype.kind not in "biuf":
        for v in flat.tolist():
            if not isinstance(v, (int, float, np.integer, np.floating)):
                raise InvalidRequestError(name, f"must hold numbers, got {type(v).__name__}")
    try:
        return flat.astype(np.float64)
    except OverflowError:
        raise InvalidRequestError(name, "holds a number out of range") from None


class CancelGuard:
    """Orders a request's cancellation checks with its final response.

    `is_cancelled` is an IPC call into Triton that reads the request's response factory; Triton frees
    that factory with the final response, and asking a freed one crashes tritonserver (2.51). So a check
    never starts once the final response is on its way, and a final response that comes while a check
    is running is sent by the checker right after it: neither side waits on the other's IPC (which
    could wait on Triton's thread pool, busy with this very request's responses)."""

    def __init__(self, is_cancelled: Callable[[], bool] | None):
        self._is_cancelled = is_cancelled
        self._lock = threading.Lock()
        self._checking = False
        self._finished = False
        self._deferred: Callable[[], None] | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    def check(self) -> bool:
        """Whether the client cancelled; False once the request has finished (or cannot tell)."""
        with self._lock:
            if self._finished or self._checking or self._is_cancelled is None:
                return False
            self._checking = True
        try:
            return bool(self._is_cancelled())
        finally:
            with self._lock:
                self._checking = False
                deferred, self._deferred = self._deferred, None
                self._finished = self._finished or deferred is not None
            if deferred is not None:
                deferred()

    def finish(self, send_final: Callable[[], None]) -> None:
        """Send the final response now, or, while a check runs, right after it. Once only."""
        with self._lock:
            if self._finished or self._deferred is not None:
                return
            if self._checking:
                self._deferred = send_final
                return
            self._finished = True
        send_final()


def model_parameters(args: Mapping[str, str]) -> dict[str, str]:
    """The string parameters of a model's config, from Triton's initialize() args."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def resolve_path(value: str, args: Mapping[str, str]) -> str:
    """A path parameter: absolute, or relative to the model repository's root."""
    if os.path.isabs(value):
        return value
    repo_root = os.path.dirname(os.path.abspath(args["model_repository"]))
    return os.path.normpath(os.path.join(repo_root, value))


def as_bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def texts(array: np.ndarray | None, field: str) -> list[str]:
    """A BYTES tensor as UTF-8 strings (flattened). InvalidRequestError for bytes that are not UTF-8,
    text that holds a lone surrogate, and values that are not text at all (numbers, None)."""
    if array is None:
        return []
    out = []
    for item in np.asarray(array, dtype=object).reshape(-1):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequestError(field, "is not valid UTF-8") from None
        elif not isinstance(item, str):
            raise InvalidRequestError(field, f"must hold text (a BYTES tensor), got {type(item).__name__}")
        else:
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequestError(field, "is not valid Unicode (it holds a lone surrogate)") from None
        out.append(str(item))
    return out


def bytes_array(values: list[list[bytes]] | list[bytes]) -> np.ndarray:
    return np.array(values, dtype=np.object_)


def error_code(exc: BaseException) -> str:
    """Triton's error code for an exception: INVALID_ARG (HTTP 400) for a bad request, UNAVAILABLE
    (HTTP 503) for an engine that is down, INTERNAL (HTTP 500) for anything else."""
    if isinstance(exc, InvalidRequestError):
        return "INVALID_ARG"
    if isinstance(exc, EngineDeadError):
        return "UNAVAILABLE"
    return "INTERNAL"


# Triton 2.51 answers every error of a decoupled model with HTTP 400 and loses its code on gRPC streams,
# so a server fault also says what it is in its message; the HTTP front (qwen_triton/runtime/front.py)
# turns these prefixes back into 503 / 500. A client error ("invalid <field>: ...") has none.
ERROR_PREFIXES = {"UNAVAILABLE": "unavailable: ", "INTERNAL": "internal error: "}


def triton_error(pb_utils, message: str, code: str = "INTERNAL"):
    """A pb_utils.TritonError with Triton's error code `code` (INVALID_ARG, CANCELLED, UNAVAILABLE,
    INTERNAL, ...), where the backend knows that code; server faults carry their ERROR_PREFIXES."""
    prefix = ERROR_PREFIXES.get(code, "")
    text = message if message.startswith(prefix) else prefix + message
    value = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(text, value) if value is not None else pb_utils.TritonError(text)


def respond(pb_utils, request, specs: Iterable[TensorSpec], compute: Callable[[dict], dict], what: str):
    """One response of a non-decoupled model: read `specs`, run `compute`,
    answer its arrays, or an error that names the bad input. Never raises."""
    try:
        inputs = read_inputs(specs, lambda n: pb_utils.get_input_tensor_by_name(request, n))
        outputs = compute(inputs)
    except QwenTritonError as exc:
        return pb_utils.InferenceResponse(error=triton_error(pb_utils, str(exc), error_code(exc)))
    except Exception as exc:  # never crash the model on a request
        log.exception("%s failed", what)
        return pb_utils.InferenceResponse(error=triton_error(pb_utils, f"{what} failed: {exc}"))
    return pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()])

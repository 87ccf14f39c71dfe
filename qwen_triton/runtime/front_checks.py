"""What the HTTP front checks before a request reaches Triton (no I/O: plain functions, unit-tested).

Bodies: bounded nesting (scanned before parsing, so no parser recursion), valid UTF-8 JSON, no lone
surrogates. /generate bodies: a JSON object whose every key is one of the model's inputs, each value of
the input's type (integers within the type's range, finite numbers, booleans, strings) and shape (a
scalar or a list where the input takes one per dimension), every required input present, and no
`stream: true` on the non-streaming endpoint. Errors are BodyError(status, message naming the field).
"""
from __future__ import annotations

import json
import math
from typing import Any

_INT_RANGES = {"TYPE_INT8": (-2**7, 2**7 - 1), "TYPE_INT16": (-2**15, 2**15 - 1), "TYPE_INT32": (-2**31, 2**31 - 1),
               "TYPE_INT64": (-2**63, 2**63 - 1), "TYPE_UINT8": (0, 2**8 - 1), "TYPE_UINT16": (0, 2**16 - 1),
               "TYPE_UINT32": (0, 2**32 - 1), "TYPE_UINT64": (0, 2**64 - 1)}
_FLOAT_MAX = {"TYPE_FP16": 65504.0, "TYPE_FP32": 3.4028234663852886e38, "TYPE_FP64": 1.7976931348623157e308,
              "TYPE_BF16": 3.3895313892515355e38}


class BodyError(ValueError):
    """A request the front refuses: `status` (400, 413) and a message naming what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def json_depth_exceeds(data: bytes, limit: int) -> bool:
    """Whether the JSON text nests arrays/objects deeper than `limit` (strings are skipped; one pass)."""
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def _no_lone_surrogates(value: Any, where: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BodyError(400, f"{where}: text holds a lone surrogate (not valid UTF-8)") from None
    elif isinstance(value, list):
        for item in value:
            _no_lone_surrogates(item, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_lone_surrogates(key, where)
            _no_lone_surrogates(item, f"{key}")


def parse_json_body(data: bytes, max_depth: int) -> Any:
    """The JSON value of a request body; BodyError(400) for nesting past `max_depth`, bytes that are not
    UTF-8, or text that is not JSON."""
    if json_depth_exceeds(data, max_depth):
        raise BodyError(400, f"the JSON body nests deeper than {max_depth} levels")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise BodyError(400, "the request body is not valid UTF-8") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BodyError(400, f"the request body is not valid JSON ({exc})") from None
    _no_lone_surrogates(value, "the request body")
    return value


def _check_value(name: str, dtype: str, value: Any) -> None:
    """One element of input `name` against its Triton data type."""
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not isinstance(value, int) or isinstance(value, bool):
            raise BodyError(400, f"{name} must be an integer, got {json.dumps(value)[:40]}")
        if not low <= value <= high:
            raise BodyError(400, f"{name} must be in [{low}, {high}] ({dtype.removeprefix('TYPE_')}), got {value}")
    elif dtype in _FLOAT_MAX:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise BodyError(400, f"{name} must be a number, got {json.dumps(value)[:40]}")
        if not math.isfinite(float(value)) or abs(float(value)) > _FLOAT_MAX[dtype]:
            raise BodyError(400, f"{name} must be a finite {dtype.removeprefix('TYPE_')} number, got {value}")
    elif dtype == "TYPE_BOOL":
        if not isinstance(value, bool):
            raise BodyError(400, f"{name} must be true or false, got {json.dumps(value)[:40]}")
    elif dtype == "TYPE_STRING":
        if not isinstance(value, str):
            raise BodyError(400, f"{name} must be a string, got {json.dumps(value)[:40]}")


def _check_input(name: str, spec: dict, value: Any) -> None:
    """A generate-body value: a scalar, or a (flat) list where the input's dims allow more than one."""
    dims = [int(d) for d in spec.get("dims", [])]
    many = any(d == -1 or d > 1 for d in dims)
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not many and len(value) != 1:
        raise BodyError(400, f"{name} takes one value, got a list of {len(value)}")
    for item in items:
        if isinstance(item, list | dict):
            what = "a string" if spec.get("data_type") == "TYPE_STRING" else "a flat value or list of values"
            raise BodyError(400, f"{name} must be {what}, got a nested {type(item).__name__}")
        _check_value(name, spec.get("data_type", ""), item)


def check_generate_body(body: Any, inputs: dict[str, dict], streaming: bool) -> None:
    """A /generate or /generate_stream body against the model's inputs (its config's `input` list)."""
    if not isinstance(body, dict):
        raise BodyError(400, "the request body must be a JSON object of the model's inputs")
    unknown = sorted(set(body) - set(inputs))
    if unknown:
        raise BodyError(400, f"{unknown[0]} is not an input of this model (its inputs: {', '.join(sorted(inputs))})")
    for name, spec in inputs.items():
        if name in body:
            _check_input(name, spec, body[name])
        elif not spec.get("optional", False):
            raise BodyError(400, f"{name} is required")
    if body.get("stream") is True and not streaming:
        raise BodyError(400, "stream is true: use the generate_stream endpoint for a streamed reply")


# Server faults that Triton 2.51 answers with 400 (it does so for every error of a decoupled model): the
# models' prefixes (serving/triton_io.ERROR_PREFIXES) and Triton's own words for a dead stub process.
_FAULTS = ((b"unavailable: ", 503), (b"is not healthy", 503), (b"internal error: ", 500))


def fault_status(status: int, body: bytes) -> int:
    """The status a response should have: a 400 whose error is a server fault becomes 503 or 500.
    `body`: a JSON error body, or the first event of a Server-Sent Events stream."""
    if status != 400 or b'"error"' not in body[:200]:
        return status
    for marker, fault in _FAULTS:
        if marker in body:
            return fault
    return status

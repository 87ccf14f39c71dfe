"""Small Triton-free helpers the model.py files share: reading a request's
inputs by contract name, the models' `parameters`, and BYTES tensors."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import InvalidRequestError, QwenTritonError
from ..outputs import EngineStats
from . import contract as c
from .contract import TensorSpec

log = logging.getLogger(__name__)

Arrays = Mapping[str, np.ndarray]  # a request's or response's tensors by contract name


def read_inputs(specs: Iterable[TensorSpec], get: Callable[[str], Any]) -> dict[str, np.ndarray]:
    """{name: array} of the inputs present; `get(name)` returns a tensor with
    `.as_numpy()` (pb_utils.Tensor) or None."""
    out = {}
    for spec in specs:
        tensor = get(spec.name)
        if tensor is not None:
            out[spec.name] = tensor.as_numpy()
    return out


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
    """A BYTES tensor as UTF-8 strings (flattened)."""
    if array is None:
        return []
    out = []
    for item in np.asarray(array, dtype=object).reshape(-1):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequestError(field, "is not valid UTF-8") from None
        out.append(str(item))
    return out


def bytes_array(values: list[list[bytes]] | list[bytes]) -> np.ndarray:
    return np.array(values, dtype=np.object_)


def metric_values(stats: EngineStats, block_size: int) -> dict[tuple[str, str, str], float]:
    """The engine's gauges as {(family, label key, label value): value}, under
    tensorrtllm_backend's metric names (see contract.METRIC_*)."""
    r, k, e = c.METRIC_REQUESTS, c.METRIC_KV_BLOCKS, c.METRIC_ENGINE
    used = stats.num_total_blocks - stats.num_free_blocks
    return {
        (r, "request_type", "active"): stats.num_running + stats.num_waiting,
        (r, "request_type", "scheduled"): stats.num_running,
        (r, "request_type", "waiting"): stats.num_waiting,
        (k, "kv_cache_block_type", "max"): stats.num_total_blocks,
        (k, "kv_cache_block_type", "free"): stats.num_free_blocks,
        (k, "kv_cache_block_type", "used"): used,
        (k, "kv_cache_block_type", "tokens_per"): block_size,
        (e, "counter", "steps"): stats.num_steps,
        (e, "counter", "preemptions"): stats.num_preemptions,
        (e, "counter", "generated_tokens"): stats.num_generated_tokens,
        (e, "counter", "max_batch_seen"): stats.max_running_seen,
    }


def triton_error(pb_utils, message: str, cancelled: bool = False):
    """A pb_utils.TritonError, CANCELLED where the backend knows that code."""
    if cancelled and hasattr(pb_utils.TritonError, "CANCELLED"):
        return pb_utils.TritonError(message, pb_utils.TritonError.CANCELLED)
    return pb_utils.TritonError(message)


def respond(pb_utils, request, specs: Iterable[TensorSpec], compute: Callable[[dict], dict], what: str):
    """One response of a non-decoupled model: read `specs`, run `compute`,
    answer its arrays, or an error that names the bad input. Never raises."""
    try:
        inputs = read_inputs(specs, lambda n: pb_utils.get_input_tensor_by_name(request, n))
        outputs = compute(inputs)
    except QwenTritonError as exc:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
    except Exception as exc:  # never crash the model on a request
        log.exception("%s failed", what)
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{what} failed: {exc}"))
    return pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()])

"""The engine model's tensors <-> the engine's typed requests and outputs.

Inputs arrive as numpy arrays with a leading batch dimension (scalars declared
with reshape [] arrive as [B]). Triton-free and torch-free.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..chat import complete_prefix_len, from_word_list
from ..chat.defaults import GenerationDefaults
from ..errors import InvalidRequestError
from ..sampling_params import SamplingParams
from . import contract as c
from .triton_io import Arrays


@dataclass(frozen=True)
class EngineRequest:
    """One request for the engine, parsed and validated from tensors."""

    prompt: list[int]
    params: SamplingParams
    streaming: bool
    exclude_input: bool


def _scalar(inputs: Arrays, name: str, default=None):
    value = inputs.get(name)
    if value is None:
        return default
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise InvalidRequestError(name, f"must hold one value, got {flat.size}")
    return flat[0].item()


def _batch_of_one(inputs: Arrays) -> np.ndarray:
    ids = inputs.get(c.IN_INPUT_IDS)
    if ids is None:
        raise InvalidRequestError(c.IN_INPUT_IDS, "is missing")
    ids = np.asarray(ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.shape[0] != 1:
        raise InvalidRequestError(c.IN_INPUT_IDS, f"holds a batch of {ids.shape[0]}; send one prompt per request")
    return ids[0]


def _words(inputs: Arrays, name: str) -> list[list[int]]:
    value = inputs.get(name)
    if value is None:
        return []
    arr = np.asarray(value)
    return from_word_list(arr[0] if arr.ndim == 3 else arr, name)


def _unsupported(inputs: Arrays) -> None:
    for name, what in ((c.IN_BEAM_WIDTH, "beam search"), (c.IN_NUM_RETURN_SEQUENCES, "several return sequences")):
        n = _scalar(inputs, name, 1)
        if n != 1:
            raise InvalidRequestError(name, f"{what} is not supported by this engine; use 1 (got {n})")
    for name in (c.IN_RETURN_CONTEXT_LOGITS, c.IN_RETURN_GENERATION_LOGITS):
        if _scalar(inputs, name, False):
            raise InvalidRequestError(name, "logits are not returned by this engine")


def is_stop_request(inputs: Arrays) -> bool:
    """A request with `stop` true ends the live requests sent under its request id."""
    return bool(_scalar(inputs, c.IN_STOP, False))


def parse_engine_request(inputs: Arrays, end_ids_of: Callable[[int | None], tuple[int, ...]],
                         defaults: GenerationDefaults, exclude_input_default: bool) -> EngineRequest:
    """Tensors -> EngineRequest. `end_ids_of(end_id)` expands an end id (None:
    not given) into every id that ends a reply with it (Qwen: <|im_end|> and
    <|endoftext|>)."""
    ids = _batch_of_one(inputs)
    length = _scalar(inputs, c.IN_INPUT_LENGTHS, len(ids))
    if not 0 <= length <= len(ids):
        raise InvalidRequestError(c.IN_INPUT_LENGTHS, f"{length} is outside [0, {len(ids)}]")
    _unsupported(inputs)
    sampling_given = any(inputs.get(n) is not None for n in (c.IN_TEMPERATURE, c.IN_TOP_K, c.IN_TOP_P))
    d = defaults if not sampling_given else GenerationDefaults(temperature=1.0)
    end_id = _scalar(inputs, c.IN_END_ID)
    params = SamplingParams(
        max_tokens=_scalar(inputs, c.IN_REQUEST_OUTPUT_LEN),
        min_tokens=_scalar(inputs, c.IN_MIN_TOKENS, 0),
        temperature=_scalar(inputs, c.IN_TEMPERATURE, d.temperature),
        top_k=_scalar(inputs, c.IN_TOP_K, d.top_k),
        top_p=_scalar(inputs, c.IN_TOP_P, d.top_p),
        repetition_penalty=_scalar(inputs, c.IN_REPETITION_PENALTY, defaults.repetition_penalty),
        presence_penalty=_scalar(inputs, c.IN_PRESENCE_PENALTY, 0.0),
        frequency_penalty=_scalar(inputs, c.IN_FREQUENCY_PENALTY, 0.0),
        seed=_scalar(inputs, c.IN_SEED),
        end_ids=end_ids_of(end_id),
        stop_token_ids=_words(inputs, c.IN_STOP_WORDS),
        bad_token_ids=_words(inputs, c.IN_BAD_WORDS),
        logprobs=bool(_scalar(inputs, c.IN_RETURN_LOG_PROBS, False)),
    )
    return EngineRequest(
        prompt=[int(t) for t in ids[:length]],
        params=params,
        streaming=bool(_scalar(inputs, c.IN_STREAMING, False)),
        exclude_input=bool(_scalar(inputs, c.IN_EXCLUDE_INPUT, exclude_input_default)),
    )


class Utf8TokenReleaser:
    """Holds back tokens whose bytes end inside a UTF-8 character, so that every
    streamed group of tokens decodes to whole characters on its own."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._token_bytes = token_bytes
        self._held: list[int] = []

    def push(self, token_ids: Sequence[int]) -> list[int]:
        self._held.extend(token_ids)
        k = complete_prefix_len([self._token_bytes(t) for t in self._held])
        ready, self._held = self._held[:k], self._held[k:]
        return ready

    def flush(self) -> list[int]:
        ready, self._held = self._held, []
        return ready


@dataclass
class ResponseAccumulator:
    """Builds the engine model's output arrays for one request."""

    request: EngineRequest
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def arrays(self, token_ids: Sequence[int], logprobs: Sequence[float]) -> dict[str, np.ndarray]:
        """Output tensors (batch 1, beam 1) for `token_ids` and their log probs."""
        ids = np.asarray(token_ids, dtype=np.int32).reshape(1, 1, -1)
        lps = np.asarray(logprobs if logprobs else [0.0] * len(token_ids), dtype=np.float32).reshape(1, 1, -1)
        return {
            c.OUT_OUTPUT_IDS: ids,
            c.OUT_SEQUENCE_LENGTH: np.asarray([[ids.shape[-1]]], dtype=np.int32),
            c.OUT_CUM_LOG_PROBS: np.asarray([[float(np.sum(logprobs))]], dtype=np.float32),
            c.OUT_OUTPUT_LOG_PROBS: lps,
            c.OUT_BATCH_INDEX: np.zeros((1, 1), dtype=np.int32),
            c.OUT_SEQUENCE_INDEX: np.zeros((1, 1), dtype=np.int32),
        }

    def final_arrays(self) -> dict[str, np.ndarray]:
        """The one response of a non-streaming request: prompt (unless
        excluded) and every generated token."""
        prefix = [] if self.request.exclude_input else self.request.prompt
        lps = ([0.0] * len(prefix) + self.logprobs) if self.logprobs else []
        return self.arrays(prefix + self.tokens, lps)

"""The engine model's input tensors -> one EngineRequest per batch row, with TensorRT-LLM's semantics.

Inputs arrive as numpy arrays with a leading batch dimension B (scalars declared with reshape [] as
[B], the others as [B, ...]). Each row of a request becomes its own sequence in the inflight batch.
Triton-free and torch-free.

Sampling follows tensorrtllm_backend's tensorrt_llm model (inflight_batcher_llm/src/utils.cc):
a missing input takes TensorRT-LLM's default (temperature 1, top_k 0, top_p 0, penalties off);
top_p <= 0 switches top-p off; top_k 0 with top-p off is greedy; min_length counts generated tokens;
an end_id below 0 means no end id. Ours: a request that sets none of temperature, runtime_top_k,
runtime_top_p and repetition_penalty gets the checkpoint's own generation_config.json instead
(as transformers and the original Qwen do). guided_decoding_guide_type / guided_decoding_guide carry
TensorRT-LLM's GuidedDecodingParams (an empty type: none). qwen_triton_top_logprobs (ours) asks for the
k most probable tokens at each output position.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..chat import from_word_list
from ..chat.defaults import GenerationDefaults
from ..errors import InvalidRequestError
from ..sampling_params import MAX_TOP_LOGPROBS, GuidedDecodingParams, SamplingParams
from . import contract as c
from .triton_io import INT32_MAX, INT32_MIN, Arrays, BatchRows, integers, reals, reject_unsupported, texts

_SAMPLING_INPUTS = (c.IN_TEMPERATURE, c.IN_TOP_K, c.IN_TOP_P, c.IN_REPETITION_PENALTY)


@dataclass(frozen=True)
class EngineRequest:
    """One row of an engine-model request, parsed and validated from tensors."""

    prompt: list[int]
    params: SamplingParams
    streaming: bool
    exclude_input: bool
    batch_index: int = 0
    batch_size: int = 1
    pad_id: int = 0


@dataclass(frozen=True)
class ParseOptions:
    """What parsing needs from the served model: `end_ids_of(end_id)` expands a request's end id
    (None: not given) into every id that ends a reply with it (Qwen: <|im_end|> and <|endoftext|>)."""

    end_ids_of: Callable[[int | None], tuple[int, ...]]
    defaults: GenerationDefaults
    exclude_input_default: bool = False
    decoupled: bool = True


def batch_size(inputs: Arrays) -> int:
    ids = inputs.get(c.IN_INPUT_IDS)
    if ids is None:
        raise InvalidRequestError(c.IN_INPUT_IDS, "is missing")
    if np.ndim(ids) == 0:
        raise InvalidRequestError(c.IN_INPUT_IDS, "must be token ids [B, L], got a single value")
    batch = 1 if np.ndim(ids) == 1 else int(np.shape(ids)[0])
    if batch == 0:
        raise InvalidRequestError(c.IN_INPUT_IDS, "the request has no rows (batch size 0)")
    return batch


def _int_in(name: str, value: int, low: int, high: int | None = None) -> int:
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidRequestError(name, f"must be {bound}, got {value}")
    return value


def _sampling(rows: BatchRows, i: int, defaults: GenerationDefaults) -> dict:
    """temperature / top_k / top_p / repetition_penalty under TensorRT-LLM's rules (module docstring)."""
    if not any(rows.inputs.get(n) is not None for n in _SAMPLING_INPUTS):
        return dict(temperature=defaults.temperature, top_k=defaults.top_k, top_p=defaults.top_p,
                    repetition_penalty=defaults.repetition_penalty)
    temperature = rows.scalar(c.IN_TEMPERATURE, i, 1.0, float)
    top_k = _int_in(c.IN_TOP_K, rows.scalar(c.IN_TOP_K, i, 0), 0)
    top_p = rows.scalar(c.IN_TOP_P, i, 0.0, float)
    if top_p > 1.0:
        raise InvalidRequestError(c.IN_TOP_P, f"must be in [0, 1] (0 switches it off), got {top_p}")
    if top_p <= 0.0:
        top_p = 1.0  # off
        if top_k == 0:
            top_k = 1  # neither filter: greedy, as TensorRT-LLM
    return dict(temperature=temperature, top_k=top_k, top_p=top_p,
                repetition_penalty=rows.scalar(c.IN_REPETITION_PENALTY, i, 1.0, float))


def _logit_bias(rows: BatchRows, i: int) -> dict[int, float]:
    """embedding_bias [V'] (V' <= vocab; empty: none) -> {token id: bias} of its non-zero entries."""
    bias = rows.array(c.IN_EMBEDDING_BIAS, i)
    if bias is None:
        return {}
    bias = reals(bias, c.IN_EMBEDDING_BIAS)
    if not np.all(np.isfinite(bias)):
        raise InvalidRequestError(c.IN_EMBEDDING_BIAS, "must hold finite numbers")
    return {int(t): float(bias[t]) for t in np.flatnonzero(bias)}


def _top_logprobs(rows: BatchRows, i: int) -> int:
    """qwen_triton_top_logprobs (ours): how many most probable tokens to return at each position; needs
    return_log_probs (they come beside output_log_probs)."""
    k = _int_in(c.IN_TOP_LOGPROBS, rows.scalar(c.IN_TOP_LOGPROBS, i, 0), 0, MAX_TOP_LOGPROBS)
    if k and not rows.scalar(c.IN_RETURN_LOG_PROBS, i, False, bool):
        raise InvalidRequestError(c.IN_TOP_LOGPROBS, f"needs {c.IN_RETURN_LOG_PROBS} true: the top log "
                                                     "probabilities come beside output_log_probs")
    return k


def _decoder_ids(rows: BatchRows, i: int) -> None:
    """decoder_input_ids are for encoder-decoder models: accepted empty, refused otherwise."""
    ids = rows.array(c.IN_DECODER_INPUT_IDS, i)
    if ids is None:
        return
    n = rows.scalar(c.IN_DECODER_INPUT_LENGTHS, i, int(np.size(ids)))
    if n > 0:
        raise InvalidRequestError(c.IN_DECODER_INPUT_IDS, "this is a decoder-only model: send the prompt in "
                                                          "input_ids and leave decoder_input_ids empty")


def _guided(rows: BatchRows, i: int) -> GuidedDecodingParams | None:
    """The row's grammar (TensorRT-LLM's GuidedDecodingParams), None when it names no guide type."""
    kind = (texts(rows.array(c.GUIDE_TYPE, i), c.GUIDE_TYPE) or [""])[0].strip()
    guide = (texts(rows.array(c.GUIDE, i), c.GUIDE) or [""])[0]
    if not kind:
        if guide:
            raise InvalidRequestError(c.GUIDE_TYPE, f"is missing: {c.GUIDE} needs a guide type")
        return None
    return GuidedDecodingParams(kind, guide)


def _row_prompt(rows: BatchRows, i: int) -> list[int]:
    ids = integers(rows.array(c.IN_INPUT_IDS, i), c.IN_INPUT_IDS)
    length = rows.scalar(c.IN_INPUT_LENGTHS, i, len(ids))
    if not 0 <= length <= len(ids):
        raise InvalidRequestError(c.IN_INPUT_LENGTHS, f"{length} is outside [0, {len(ids)}] (input_ids holds "
                                                      f"{len(ids)} ids)")
    return ids[:length]


def _one_only(rows: BatchRows, i: int) -> None:
    for name, what in ((c.IN_BEAM_WIDTH, "beam search"), (c.IN_NUM_RETURN_SEQUENCES, "several return sequences")):
        n = rows.scalar(name, i, 1)
        if n != 1:
            raise InvalidRequestError(name, f"{what} is not supported by this engine; use 1 (got {n})")


def parse_row(rows: BatchRows, i: int, opts: ParseOptions) -> EngineRequest:
    """Row i of a request -> EngineRequest. Raises InvalidRequestError naming the input."""
    _one_only(rows, i)
    _decoder_ids(rows, i)
    streaming = rows.scalar(c.IN_STREAMING, i, False, bool)
    if streaming and not opts.decoupled:
        raise InvalidRequestError(c.IN_STREAMING, "streaming needs the decoupled engine model; this one is built "
                                                  "with decoupled=false (build with decoupled=true to stream)")
    max_tokens = _int_in(c.IN_REQUEST_OUTPUT_LEN, rows.scalar(c.IN_REQUEST_OUTPUT_LEN, i), 1)
    end_id = rows.scalar(c.IN_END_ID, i)
    if end_id is not None:
        _int_in(c.IN_END_ID, end_id, INT32_MIN, INT32_MAX)
    end_ids = () if end_id is not None and end_id < 0 else opts.end_ids_of(end_id)
    seed = rows.scalar(c.IN_RANDOM_SEED, i)
    min_tokens = _int_in(c.IN_MIN_LENGTH, rows.scalar(c.IN_MIN_LENGTH, i, 0), 0, max_tokens)
    guided = _guided(rows, i)
    if guided is not None and min_tokens > 0:
        raise InvalidRequestError(c.IN_MIN_LENGTH, "cannot be combined with guided decoding (the grammar decides "
                                                   "where the output ends); leave it out or 0")
    params = SamplingParams(
        max_tokens=max_tokens, min_tokens=min_tokens,
        presence_penalty=rows.scalar(c.IN_PRESENCE_PENALTY, i, 0.0, float),
        frequency_penalty=rows.scalar(c.IN_FREQUENCY_PENALTY, i, 0.0, float),
        seed=seed, end_ids=end_ids,
        stop_token_ids=_words(rows, i, c.IN_STOP_WORDS), bad_token_ids=_words(rows, i, c.IN_BAD_WORDS),
        logprobs=rows.scalar(c.IN_RETURN_LOG_PROBS, i, False, bool), top_logprobs=_top_logprobs(rows, i),
        logit_bias=_logit_bias(rows, i),
        return_context_logits=rows.scalar(c.IN_RETURN_CONTEXT_LOGITS, i, False, bool),
        return_generation_logits=rows.scalar(c.IN_RETURN_GENERATION_LOGITS, i, False, bool),
        return_perf_metrics=rows.scalar(c.IN_RETURN_PERF_METRICS, i, False, bool),
        guided_decoding=guided, **_sampling(rows, i, opts.defaults))
    pad_id = rows.scalar(c.IN_PAD_ID, i)
    if pad_id is not None:  # it pads output_ids, an INT32 tensor
        _int_in(c.IN_PAD_ID, pad_id, INT32_MIN, INT32_MAX)
    return EngineRequest(
        prompt=_row_prompt(rows, i), params=params, streaming=streaming,
        exclude_input=rows.scalar(c.IN_EXCLUDE_INPUT, i, opts.exclude_input_default, bool), batch_index=i,
        batch_size=rows.batch, pad_id=pad_id if pad_id is not None else (end_ids[0] if end_ids else 0))


def _words(rows: BatchRows, i: int, name: str) -> list[list[int]]:
    value = rows.array(name, i)
    return [] if value is None else from_word_list(np.asarray(value), name)


def parse_engine_request(inputs: Arrays, opts: ParseOptions) -> list[EngineRequest]:
    """Every row of an engine-model request (B >= 1). Raises InvalidRequestError; queues nothing."""
    reject_unsupported(c.ENGINE_INPUTS, inputs)
    for name in (c.IN_INPUT_LENGTHS, c.IN_REQUEST_OUTPUT_LEN):
        if inputs.get(name) is None:
            raise InvalidRequestError(name, "is missing")
    batch = batch_size(inputs)
    rows = BatchRows(inputs, batch)
    return [parse_row(rows, i, opts) for i in range(batch)]


def is_stop_request(inputs: Arrays) -> bool:
    """A request with `stop` true ends the live requests sent under its request id."""
    value = inputs.get(c.IN_STOP)
    return value is not None and np.size(value) > 0 and bool(np.asarray(value).reshape(-1)[0])


def _request_params(parameters: str) -> dict:
    """A request's parameters (Triton's JSON string) as a dict; anything but a JSON object is empty."""
    try:
        params = json.loads(parameters or "{}")
    except ValueError:
        return {}
    return params if isinstance(params, dict) else {}


def wants_ack(parameters: str) -> bool:
    """Whether a request's parameters ask for the empty first response (contract.REQUEST_PARAM_ACK)."""
    return _request_params(parameters).get(c.REQUEST_PARAM_ACK) is True

"""The entry points `ensemble` and `tensorrt_llm_bls` without Triton: upstream's ensemble pipeline
(preprocessing -> engine -> postprocessing) done in code.

Why code and not Triton's ensemble scheduler: Triton 2.51's ensemble passes a client's cancellation
only to steps that have not started, never to the engine step already streaming (server#6739), so a
cancelled or disconnected stream would generate until max_tokens. In code, the entry model sees the
cancellation and sends the engine a `stop` for its request. The wiring is exactly upstream's
(contract.PIPELINE_STEPS); preprocessing runs in-process, and each row's text is detokenized
incrementally, holding back incomplete UTF-8 across responses (the state an ensemble cannot keep).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..chat import IncrementalDetokenizer, Tokenizer
from ..errors import InvalidRequestError
from . import contract as c
from .preprocess import Preprocessor, preprocess_arrays
from .triton_io import Arrays, BatchRows, reject_unsupported

_PRE_STEP, _ENGINE_STEP, _POST_STEP = c.PIPELINE_STEPS
# what the entry points ask the engine for; our engine also has c.OURS_ONLY outputs (TensorRT-LLM's has none)
ENGINE_OUTPUT_NAMES = tuple(spec.name for spec in c.ENGINE_OUTPUTS if spec.name not in c.OURS_ONLY)
# engine outputs the entry points pass through under the same name (all but output_ids, sequence_length)
PASSTHROUGH = tuple(name for name, public in _ENGINE_STEP[2].items() if not public.startswith("_"))


@dataclass(frozen=True)
class EnginePlan:
    """An entry-point request turned into the engine model's inputs."""

    inputs: dict[str, np.ndarray]
    streaming: bool
    batch: int
    logprobs: bool  # some row asked for return_log_probs


def plan(pre: Preprocessor, specs: tuple[c.TensorSpec, ...], inputs: Arrays) -> EnginePlan:
    """Entry-point inputs -> the engine model's inputs, wired as upstream's ensemble wires them.
    A chat `messages` request leaves the prompt out of its reply unless it says otherwise (ours).
    Raises InvalidRequestError naming the bad input."""
    reject_unsupported(specs, inputs)
    _, pre_in, pre_out = _PRE_STEP
    tensors = dict(inputs)
    produced = preprocess_arrays(pre, {name: tensors[src] for name, src in pre_in.items() if src in tensors})
    tensors.update({internal: produced[name] for name, internal in pre_out.items() if name in produced})
    batch = int(produced[c.PRE_INPUT_ID].shape[0])
    if c.MESSAGES in inputs and c.EXCLUDE_INPUT_IN_OUTPUT not in inputs:
        tensors[c.EXCLUDE_INPUT_IN_OUTPUT] = np.ones((batch, 1), dtype=bool)
    _, eng_in, _ = _ENGINE_STEP
    engine_inputs = {name: _rows(tensors[src]) for name, src in eng_in.items() if src in tensors}
    rows = BatchRows(inputs, batch)
    streaming = any(rows.scalar(c.STREAM, i, False, bool) for i in range(batch))
    logprobs = any(rows.scalar(c.RETURN_LOG_PROBS, i, False, bool) for i in range(batch))
    return EnginePlan(engine_inputs, streaming, batch, logprobs)


def _rows(array: np.ndarray) -> np.ndarray:
    """An input as the engine model takes it, [batch, ...]: an entry input that the config reshapes to
    one value per row (upstream's `reshape: { shape: [ ] }`, e.g. `num_return_sequences`) reaches the
    entry model as [batch], and a BLS call must send it as [batch, 1] again."""
    array = np.asarray(array)
    return array.reshape(-1, 1) if array.ndim == 1 else array


def stop_inputs() -> dict[str, np.ndarray]:
    """The inputs of a `stop` request (the required ones hold placeholders, as upstream's client)."""
    one = np.ones((1, 1), dtype=np.int32)
    return {c.IN_INPUT_IDS: one, c.IN_INPUT_LENGTHS: one, c.IN_REQUEST_OUTPUT_LEN: one,
            c.IN_STOP: np.ones((1, 1), dtype=bool)}


class ResponseDecoder:
    """Turns one request's engine responses into entry-point outputs: `text_output` [rows] plus the
    engine outputs passed through. Streaming rows decode incrementally (one detokenizer per row);
    a non-streaming row decodes its ids in one go."""

    def __init__(self, tokenizer: Tokenizer, batch: int, skip_special: bool = True):
        self._tokenizer, self._skip = tokenizer, skip_special
        self._rows = [IncrementalDetokenizer(tokenizer, skip_special) for _ in range(batch)]

    def push(self, engine_outputs: Arrays, streaming: bool) -> dict[str, np.ndarray]:
        """One engine response (one row when decoupled, every row when not) -> entry outputs."""
        ids = np.asarray(engine_outputs[c.OUT_OUTPUT_IDS])          # [R, beams, T]
        lengths = np.asarray(engine_outputs[c.OUT_SEQUENCE_LENGTH]).reshape(ids.shape[0], -1)  # [R, beams]
        index = engine_outputs.get(c.BATCH_INDEX)
        rows = np.asarray(index).reshape(-1).tolist() if index is not None else list(range(ids.shape[0]))
        texts = []
        for r, row in enumerate(rows):
            tokens = ids[r, 0, :int(lengths[r, 0])].tolist()
            if not 0 <= row < len(self._rows):
                raise InvalidRequestError(c.BATCH_INDEX, f"engine answered row {row} of {len(self._rows)}")
            texts.append(self._rows[row].push(tokens) if streaming else self._one_shot(tokens))
        return self._outputs(texts, engine_outputs)

    def finish(self, logprobs: bool) -> list[dict[str, np.ndarray]]:
        """Streaming: each row's text still held back at the end (bytes that never completed a character),
        as one response per row that has any. It carries no new token: with `logprobs`, an empty
        output_log_probs says so to clients that count tokens."""
        out = []
        for row, detok in enumerate(self._rows):
            tail = detok.flush()
            if tail:
                out.append({c.TEXT_OUTPUT: np.array([tail.encode("utf-8")], dtype=np.object_)})
                if logprobs:
                    out[-1][c.OUTPUT_LOG_PROBS] = np.zeros((1, 1, 0), dtype=np.float32)
                if len(self._rows) > 1:
                    out[-1][c.BATCH_INDEX] = np.array([[row]], dtype=np.int32)
        return out

    def _one_shot(self, tokens: list[int]) -> str:
        detok = IncrementalDetokenizer(self._tokenizer, self._skip)
        return detok.push(tokens) + detok.flush()

    @staticmethod
    def _outputs(texts: list[str], engine_outputs: Arrays) -> dict[str, np.ndarray]:
        out = {c.TEXT_OUTPUT: np.array([t.encode("utf-8") for t in texts], dtype=np.object_)}
        for name in PASSTHROUGH:
            if name in engine_outputs:
                out[name] = np.asarray(engine_outputs[name])
        return out

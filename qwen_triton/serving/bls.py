"""The `tensorrt_llm_bls` model without Triton: the ensemble's pipeline done in
code, so that cancellation reaches the engine.

Triton's ensemble scheduler passes a client's cancellation only to steps that
have not started, never to the engine step already streaming (Triton 2.51; see
triton-inference-server/server#6739): a cancelled or disconnected ensemble
request keeps generating until max_tokens. The BLS model takes the same inputs
and gives the same outputs as the ensemble, runs preprocessing and
detokenization in-process, calls the engine model, and on cancellation sends it
a `stop` request for the engine request's id.
"""
from __future__ import annotations

import numpy as np

from ..chat import IncrementalDetokenizer, Tokenizer
from . import contract as c
from .preprocess import Preprocessor, preprocess_arrays
from .triton_io import Arrays

_PRE_STEP, _ENGINE_STEP, _POST_STEP = c.ENSEMBLE_STEPS
ENGINE_OUTPUT_NAMES = tuple(spec.name for spec in c.ENGINE_OUTPUTS)


def engine_inputs(pre: Preprocessor, inputs: Arrays) -> dict[str, np.ndarray]:
    """Ensemble inputs -> the engine model's inputs, wired exactly as the
    ensemble wires them (contract.ENSEMBLE_STEPS). Raises InvalidRequestError."""
    _, pre_in, pre_out = _PRE_STEP
    tensors = dict(inputs)
    produced = preprocess_arrays(pre, {name: tensors[src] for name, src in pre_in.items() if src in tensors})
    tensors.update({internal: produced[name] for name, internal in pre_out.items()})
    _, eng_in, _ = _ENGINE_STEP
    return {name: tensors[src] for name, src in eng_in.items() if src in tensors}


def stop_inputs() -> dict[str, np.ndarray]:
    """The inputs of a `stop` request (the required ones hold placeholders)."""
    one = np.ones((1, 1), dtype=np.int32)
    return {c.IN_INPUT_IDS: one, c.IN_INPUT_LENGTHS: one, c.IN_REQUEST_OUTPUT_LEN: one,
            c.IN_STOP: np.ones((1, 1), dtype=bool)}


def is_streaming(inputs: Arrays) -> bool:
    value = inputs.get(c.STREAM)
    return bool(np.asarray(value).reshape(-1)[0]) if value is not None else False


class ResponseDecoder:
    """Turns one request's engine responses into ensemble outputs, holding back
    incomplete UTF-8 across responses (it keeps the state an ensemble can't)."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self._detok = IncrementalDetokenizer(tokenizer, skip_special)
        _, _, self._passthrough = _ENGINE_STEP

    def push(self, engine_outputs: Arrays) -> dict[str, np.ndarray]:
        """One engine response -> ensemble outputs (text_output holds the new text)."""
        ids = np.asarray(engine_outputs[c.OUT_OUTPUT_IDS])
        lengths = np.asarray(engine_outputs[c.OUT_SEQUENCE_LENGTH]).reshape(-1)
        text = self._detok.push(ids.reshape(-1)[:int(lengths[0])].tolist())
        return self._outputs(text, engine_outputs)

    def finish(self, last: Arrays | None = None) -> dict[str, np.ndarray]:
        """The text still held back at the end of the request."""
        return self._outputs(self._detok.flush(), last or {})

    def _outputs(self, text: str, engine_outputs: Arrays) -> dict[str, np.ndarray]:
        out = {c.TEXT_OUTPUT: np.array([[text.encode("utf-8")]], dtype=np.object_)}
        for name, public in self._passthrough.items():
            if name in engine_outputs and not public.startswith("_"):
                out[public] = np.asarray(engine_outputs[name])
        return out


def join_outputs(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Non-streaming: all texts joined; the other outputs from the last part."""
    joined = dict(parts[-1])
    joined[c.TEXT_OUTPUT] = np.array([[b"".join(p[c.TEXT_OUTPUT].reshape(-1)[0] for p in parts)]],
                                     dtype=np.object_)
    return joined

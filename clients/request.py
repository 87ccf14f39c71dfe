"""The request: :class:`GenerateRequest` and its mapping onto the ensemble's input tensors (names from
``qwen_triton.serving.contract``), as JSON for HTTP or as numpy arrays for gRPC."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qwen_triton import wire
from qwen_triton.serving import contract as c

# (GenerateRequest attribute, ensemble input). Every ensemble input this engine supports has a field
# (Python names of our own: min_tokens and seed go on the wire as min_length and random_seed).
REQUEST_FIELDS: tuple[tuple[str, str], ...] = (
    ("text", c.TEXT_INPUT),
    ("messages", c.MESSAGES),
    ("max_tokens", c.MAX_TOKENS),
    ("bad_words", c.BAD_WORDS),
    ("stop", c.STOP_WORDS),
    ("end_id", c.END_ID),
    ("pad_id", c.PAD_ID),
    ("top_k", c.TOP_K),
    ("top_p", c.TOP_P),
    ("temperature", c.TEMPERATURE),
    ("length_penalty", c.LENGTH_PENALTY),
    ("repetition_penalty", c.REPETITION_PENALTY),
    ("presence_penalty", c.PRESENCE_PENALTY),
    ("frequency_penalty", c.FREQUENCY_PENALTY),
    ("min_tokens", c.MIN_LENGTH),
    ("seed", c.RANDOM_SEED),
    ("beam_width", c.BEAM_WIDTH),
    ("num_return_sequences", c.NUM_RETURN_SEQUENCES),
    ("stream", c.STREAM),
    ("exclude_input_in_output", c.EXCLUDE_INPUT_IN_OUTPUT),
    ("return_log_probs", c.RETURN_LOG_PROBS),
    ("return_context_logits", c.RETURN_CONTEXT_LOGITS),
    ("return_generation_logits", c.RETURN_GENERATION_LOGITS),
    ("return_perf_metrics", c.RETURN_PERF_METRICS),
    ("embedding_bias_words", c.EMBEDDING_BIAS_WORDS),
    ("embedding_bias_weights", c.EMBEDDING_BIAS_WEIGHTS),
    ("guide_type", c.GUIDE_TYPE),
    ("guide", c.GUIDE),
)
INPUT_SPECS: dict[str, c.TensorSpec] = {spec.name: spec for spec in c.ENSEMBLE_INPUTS}


@dataclass
class GenerateRequest:
    """One generation request for the ensemble: either ``text`` (tokenized as given) or chat ``messages``
    (a list of ``{"role", "content"}`` or its JSON text, rendered with the model's chat template).

    Fields left at None are not sent, so the server's defaults apply (greedy unless the checkpoint's
    generation config asks for sampling; ``temperature=0`` is greedy).
    """

    text: str | None = None
    messages: Sequence[Mapping[str, str]] | str | None = None
    max_tokens: int = 128
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    length_penalty: float | None = None
    min_tokens: int | None = None
    stop: Sequence[str] = ()
    bad_words: Sequence[str] = ()
    end_id: int | None = None
    pad_id: int | None = None
    beam_width: int | None = None
    num_return_sequences: int | None = None
    stream: bool = False
    exclude_input_in_output: bool | None = True  # the reply only (upstream echoes the prompt when not streaming)
    return_log_probs: bool | None = None
    return_context_logits: bool | None = None
    return_generation_logits: bool | None = None
    return_perf_metrics: bool | None = None
    embedding_bias_words: Sequence[str] = ()
    embedding_bias_weights: Sequence[float] = ()
    # guided decoding (docs/guided-decoding.md): json, json_schema, regex, ebnf_grammar or structural_tag
    guide_type: str | None = None
    guide: str | None = None  # its text: the schema, the regex, the grammar
    request_id: str | None = None  # gRPC request id (HTTP generate has none)

    def __post_init__(self) -> None:
        if (self.text is None) == (self.messages is None):
            raise ValueError("give exactly one of text or messages")
        if any(isinstance(words, str) for words in (self.stop, self.bad_words, self.embedding_bias_words)):
            raise TypeError("stop, bad_words and embedding_bias_words are sequences of strings, not one string")

    def messages_json(self) -> str | None:
        """``messages`` as the JSON text the ``messages`` input carries."""
        if self.messages is None or isinstance(self.messages, str):
            return self.messages
        return json.dumps([dict(m) for m in self.messages], ensure_ascii=False)

    def values(self, stream: bool | None = None) -> dict[str, Any]:
        """{ensemble input name: Python value (scalar, or list for word lists)} of the fields that are set
        (empty lists are not sent); ``stream`` overrides the request's own flag."""
        out: dict[str, Any] = {}
        for attr, name in REQUEST_FIELDS:
            value = self.messages_json() if attr == "messages" else getattr(self, attr)
            if attr == "stream" and stream is not None:
                value = stream
            if value is None:
                continue
            value = wire.python_value(INPUT_SPECS[name], value)
            if not (isinstance(value, list) and not value):
                out[name] = value
        return out

    def to_json(self, stream: bool | None = None) -> dict[str, Any]:
        """The JSON body of ``/generate`` and ``/generate_stream``."""
        return self.values(stream)

    def to_arrays(self, stream: bool | None = None, batched: bool = True) -> dict[str, np.ndarray]:
        """{name: numpy array} for the infer API: every ensemble model is batched, so each tensor gets a
        leading batch dimension of 1 unless ``batched=False``."""
        return {name: wire.to_array(INPUT_SPECS[name], value, batched)
                for name, value in self.values(stream).items()}

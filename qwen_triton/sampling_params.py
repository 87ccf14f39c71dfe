"""Per-request sampling settings: the typed contract between a request and the engine."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InvalidRequestError

TokenIds = tuple[int, ...]

# TensorRT-LLM's GuidedDecodingParams.GuideType names, as tensorrtllm_backend's guided_decoding_guide_type
# carries them: the guide is ignored for "json" (any JSON object or array), a JSON Schema, a regular
# expression, a GBNF/EBNF grammar (root rule `root`), or an xgrammar structural tag (JSON).
GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar", "structural_tag")
GUIDE_TYPE_FIELD = "guided_decoding_guide_type"
GUIDE_FIELD = "guided_decoding_guide"
MAX_TOP_LOGPROBS = 20  # most alternatives a request may ask for per token (OpenAI's bound)


def _word_lists(name: str, words) -> tuple[TokenIds, ...]:
    """Normalise stop/bad words given as token-id lists into a tuple of tuples."""
    out = []
    for word in words or ():
        ids = tuple(int(t) for t in word)
        if not ids:
            raise InvalidRequestError(name, "a word must hold at least one token id")
        out.append(ids)
    return tuple(out)


def _logit_bias(bias) -> tuple[tuple[int, float], ...]:
    """{token id: bias} or (id, bias) pairs -> sorted pairs; a repeated id adds up; biases must be finite."""
    pairs = bias.items() if isinstance(bias, dict) else bias or ()
    total: dict[int, float] = {}
    for token, value in pairs:
        value = float(value)
        if not math.isfinite(value):
            raise InvalidRequestError("logit_bias", f"biases must be finite numbers, got {value} for token {token}")
        total[int(token)] = total.get(int(token), 0.0) + value
    return tuple(sorted(total.items()))


@dataclass(frozen=True)
class GuidedDecodingParams:
    """A grammar the output must follow (TensorRT-LLM's GuidedDecodingParams).

    `guide_type` is one of GUIDE_TYPES; `guide` is its text (a JSON Schema, a regex, an EBNF grammar,
    a structural tag), ignored for "json". Errors name the Triton inputs that carry the two fields.
    Whether a guide compiles is checked by the engine (qwen_triton/guided.py), which has the vocabulary.
    """

    guide_type: str
    guide: str = ""

    def __post_init__(self) -> None:
        if self.guide_type not in GUIDE_TYPES:
            raise InvalidRequestError(
                GUIDE_TYPE_FIELD, f"must be one of {', '.join(GUIDE_TYPES)}, got {self.guide_type!r}")
        if not isinstance(self.guide, str):
            raise InvalidRequestError(GUIDE_FIELD, f"must be text, got {type(self.guide).__name__}")
        if self.guide_type != "json" and not self.guide.strip():
            raise InvalidRequestError(GUIDE_FIELD, f"is empty; guide type {self.guide_type!r} needs one")


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    temperature == 0 (or top_k == 1) is greedy decoding. top_k == 0 and
    top_p == 1.0 switch those filters off. Penalties follow transformers for
    `repetition_penalty` (over prompt and output) and OpenAI for
    `presence_penalty` / `frequency_penalty` (over the output only).
    Generation ends at any of `end_ids` (not part of the output), after a
    token sequence in `stop_token_ids` (kept in the output), or at
    `max_tokens`. `min_tokens` suppresses both kinds of ending until that
    many tokens exist. `bad_token_ids` are sequences that are never completed.
    A request without `seed` gets one drawn at admission, so every request's
    randomness depends only on its own seed and step, never on its batch.
    `logit_bias` adds a fixed amount to chosen tokens' raw logits before every
    other step (TensorRT-LLM's embedding_bias, OpenAI's logit_bias).

    Output options: `logprobs` returns each chosen token's log probability; `top_logprobs` (0 ..
    MAX_TOP_LOGPROBS, needs `logprobs`) also the k most probable tokens at each position, from the same
    distribution (Sampler);
    `return_context_logits` the float32 logits of every prompt position and
    `return_generation_logits` those that produced each output token (see
    RequestOutput); both are bounded by EngineConfig.max_logits_bytes.
    `return_perf_metrics` attaches RequestMetrics to every output.

    `guided_decoding` constrains the output to a grammar: at each step only tokens the grammar allows
    can be drawn, an end id only where the grammar may end, and the grammar's completion ends the
    request (finish reason "stop"). It cannot be combined with `min_tokens` (the grammar alone decides
    where the output may end).
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    end_ids: TokenIds = ()
    stop_token_ids: tuple[TokenIds, ...] = ()
    bad_token_ids: tuple[TokenIds, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()
    return_context_logits: bool = False
    return_generation_logits: bool = False
    return_perf_metrics: bool = False
    guided_decoding: GuidedDecodingParams | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise in place once
        set_(self, "end_ids", tuple(int(t) for t in self.end_ids))
        set_(self, "stop_token_ids", _word_lists("stop_words", self.stop_token_ids))
        set_(self, "bad_token_ids", _word_lists("bad_words", self.bad_token_ids))
        set_(self, "logit_bias", _logit_bias(self.logit_bias))
        self._check()

    def _check(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidRequestError("max_tokens", f"must be a positive integer, got {self.max_tokens!r}")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise InvalidRequestError(
                "min_tokens", f"must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidRequestError("temperature", f"must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidRequestError("top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidRequestError("top_p", f"must be in (0, 1], got {self.top_p}")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise InvalidRequestError(
                "repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not math.isfinite(value) or abs(value) > 2.0:
                raise InvalidRequestError(name, f"must be in [-2, 2], got {value}")
        if self.seed is not None and not (0 <= self.seed < 2**64):
            raise InvalidRequestError("seed", f"must be in [0, 2**64), got {self.seed}")
        if not (isinstance(self.top_logprobs, int) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS):
            raise InvalidRequestError("top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}")
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequestError("top_logprobs", "needs logprobs: the alternatives come beside the chosen token's")
        if self.guided_decoding is not None and self.min_tokens > 0:
            raise InvalidRequestError(
                "min_tokens", "cannot be combined with guided decoding: the grammar decides where the output ends")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def needs_known_outputs(self) -> bool:
        """Whether sampling the next token, or handing back logits, needs every earlier token on the host:
        penalties over the output, bad words (multi-token ones match the output's end), a grammar, logits to
        return. The engine's async scheduling runs steps one at a time while such a request is live."""
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or bool(self.bad_token_ids) or self.guided_decoding is not None
                or self.return_context_logits or self.return_generation_logits)

    def all_token_ids(self) -> set[int]:
        """Every token id this request names, for checking against the vocabulary."""
        ids = set(self.end_ids) | {t for t, _ in self.logit_bias}
        for word in self.stop_token_ids + self.bad_token_ids:
            ids.update(word)
        return ids

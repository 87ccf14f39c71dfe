"""Preprocessing: a request's text or chat messages -> prompt ids, word lists, end ids.

Triton-free: `model_repo/preprocessing/1/model.py` converts tensors and calls this.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ..chat import Tokenizer, ids_to_word_list, load_tokenizer, parse_messages, render_prompt
from ..chat.template import DEFAULT_SYSTEM
from ..errors import InvalidRequestError
from . import contract as c
from .triton_io import INT32_MAX, INT32_MIN, Arrays, BatchRows, reals, reject_unsupported, texts

FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class PreprocessRequest:
    """One prompt of a preprocessing request, as plain Python values."""

    text: str | None
    messages: str | None  # JSON text of [{"role", "content"}, ...]
    output_len: int
    stop_words: tuple[str, ...] = ()
    bad_words: tuple[str, ...] = ()
    end_id: int | None = None
    pad_id: int | None = None
    bias_words: tuple[str, ...] = ()
    bias_weights: tuple[float, ...] = ()


@dataclass(frozen=True)
class PreprocessResult:
    input_ids: list[int]
    output_len: int
    stop_words: list[list[int]]  # [2, N] word list
    bad_words: list[list[int]]
    end_id: int
    pad_id: int
    logit_bias: dict[int, float]  # token id -> bias (embedding_bias_words / _weights)


class Preprocessor:
    """Tokenizes prompts and word lists for one checkpoint's tokenizer.

    `text_input` is tokenized as given, special-token text included, so clients
    that write ChatML by hand keep working (as with tensorrtllm_backend).
    `messages` go through the checkpoint's chat template (ChatML with Qwen's
    default system prompt for Qwen), where user text can never become a
    control token. A raw text prompt gets the BOS in front only when the
    checkpoint asks for one (`Tokenizer.add_bos`: LLaMA 2 yes, Qwen never).
    When the request names no end id, the tokenizer's end ids are used (Qwen
    chat: <|im_end|> and <|endoftext|>); the ones after the first travel as
    single-token stop words, which either engine honours. Every default id
    comes from the tokenizer, which read them from the checkpoint
    (`qwen_triton/chat/defaults.py`).
    """

    def __init__(self, tokenizer: Tokenizer, default_system: str = DEFAULT_SYSTEM,
                 max_input_len: int | None = None, max_output_len: int | None = None):
        self.tokenizer = tokenizer
        self.default_system = default_system
        self.max_input_len = max_input_len
        self.max_output_len = max_output_len
        if not tokenizer.eos_ids:
            raise ValueError("the tokenizer names no end-of-text token")

    @classmethod
    def from_dir(cls, tokenizer_dir: str, **kw) -> Preprocessor:
        return cls(load_tokenizer(tokenizer_dir), **kw)

    @classmethod
    def from_parameters(cls, params: Mapping[str, str], resolve: Callable[[str], str]) -> Preprocessor:
        """From a model's config parameters (contract.PARAM_*); `resolve` turns a path parameter into a path."""
        def limit(key: str) -> int | None:
            return int(params[key]) if params.get(key) else None

        return cls.from_dir(resolve(params[c.PARAM_TOKENIZER_DIR]),
                            default_system=params.get(c.PARAM_DEFAULT_SYSTEM) or DEFAULT_SYSTEM,
                            max_input_len=limit(c.PARAM_MAX_INPUT_LEN), max_output_len=limit(c.PARAM_MAX_OUTPUT_LEN))

    def __call__(self, req: PreprocessRequest) -> PreprocessResult:
        if not 1 <= req.output_len <= INT32_MAX:
            raise InvalidRequestError(c.MAX_TOKENS, f"must be in [1, {INT32_MAX}], got {req.output_len}")
        for field, value in ((c.END_ID, req.end_id), (c.PAD_ID, req.pad_id)):  # they travel as INT32
            if value is not None and not INT32_MIN <= value <= INT32_MAX:
                raise InvalidRequestError(field, f"must be in [{INT32_MIN}, {INT32_MAX}], got {value}")
        if self.max_output_len is not None and req.output_len > self.max_output_len:
            raise InvalidRequestError(
                c.MAX_TOKENS, f"{req.output_len} is more than max_output_len={self.max_output_len}")
        ids = self._prompt_ids(req)
        if self.max_input_len is not None and len(ids) > self.max_input_len:
            raise InvalidRequestError(
                c.TEXT_INPUT, f"the prompt has {len(ids)} tokens, more than max_input_len={self.max_input_len}")
        end_id = req.end_id if req.end_id is not None else self.tokenizer.eos_ids[0]
        extra_ends = [] if req.end_id is not None else [[t] for t in self.tokenizer.eos_ids[1:]]
        stop = self._words(req.stop_words, c.STOP_WORDS) + extra_ends
        pad_id = next(i for i in (req.pad_id, self.tokenizer.pad_id, end_id) if i is not None)
        return PreprocessResult(ids, req.output_len, ids_to_word_list(stop),
                                ids_to_word_list(self._words(req.bad_words, c.BAD_WORDS)), end_id, pad_id,
                                self._bias(req.bias_words, req.bias_weights))

    def _bias(self, words: tuple[str, ...], weights: tuple[float, ...]) -> dict[int, float]:
        """tensorrtllm_backend's embedding bias: each word's weight is added to every one of its tokens."""
        if len(words) != len(weights):
            raise InvalidRequestError(c.EMBEDDING_BIAS_WEIGHTS, f"has {len(weights)} weights for {len(words)} "
                                                                "embedding_bias_words; give one weight per word")
        bias: dict[int, float] = {}
        for word, weight in zip(words, weights):
            if not math.isfinite(weight):
                raise InvalidRequestError(c.EMBEDDING_BIAS_WEIGHTS, f"must be finite numbers, got {weight}")
            for token in self.tokenizer.encode(word, allow_special=True):
                bias[token] = bias.get(token, 0.0) + weight
        for token, total in bias.items():  # EMBEDDING_BIAS is FP32: a larger sum would become infinity
            if abs(total) > FLOAT32_MAX:
                raise InvalidRequestError(c.EMBEDDING_BIAS_WEIGHTS, f"the weights on token {token} add up to "
                                                                    f"{total:g}, beyond float32 (±{FLOAT32_MAX:g})")
        return bias

    def _prompt_ids(self, req: PreprocessRequest) -> list[int]:
        if req.messages:
            if req.text:
                raise InvalidRequestError(c.MESSAGES, "give either text_input or messages, not both")
            return render_prompt(self.tokenizer, parse_messages(req.messages),
                                 default_system=self.default_system, max_prompt_len=self.max_input_len)
        if not req.text:
            raise InvalidRequestError(c.TEXT_INPUT, "is missing or empty (or send chat `messages`)")
        ids = self.tokenizer.encode(req.text, allow_special=True)
        bos = self.tokenizer.bos_id
        if self.tokenizer.add_bos and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    def _words(self, words: tuple[str, ...], field: str) -> list[list[int]]:
        out = []
        for word in words:
            if not isinstance(word, str):
                raise InvalidRequestError(field, "words must be strings")
            ids = self.tokenizer.encode(word, allow_special=True)
            if ids:
                out.append(ids)
        return out


def _pad(rows: list[list[int]], value: int) -> np.ndarray:
    width = max(len(r) for r in rows)
    return np.array([r + [value] * (width - len(r)) for r in rows], dtype=np.int32)


def _pad_word_lists(lists: list[list[list[int]]]) -> np.ndarray:
    """[B] word lists of [2, N_b] -> [B, 2, max N], ids padded with 0, offsets with -1."""
    width = max(len(w[0]) for w in lists)
    return np.array([[w[0] + [0] * (width - len(w[0])), w[1] + [-1] * (width - len(w[1]))] for w in lists],
                    dtype=np.int32)


def _bias_rows(results: list[PreprocessResult], vocab: int) -> np.ndarray:
    """EMBEDDING_BIAS: [B, vocab] float32 when any row has a bias, else [B, 0] (upstream's "none")."""
    if not any(r.logit_bias for r in results):
        return np.zeros((len(results), 0), dtype=np.float32)
    dense = np.zeros((len(results), vocab), dtype=np.float32)
    for i, r in enumerate(results):
        for token, weight in r.logit_bias.items():
            dense[i, token] = weight
    return dense


def _text(rows: BatchRows, name: str, field: str, i: int) -> str | None:
    return (texts(rows.array(name, i), field) or [None])[0]


def _words(rows: BatchRows, name: str, field: str, i: int) -> tuple[str, ...]:
    return tuple(w for w in texts(rows.array(name, i), field) if w)


def _request(rows: BatchRows, i: int) -> PreprocessRequest:
    weights = rows.array(c.PRE_EMBEDDING_BIAS_WEIGHTS, i)
    return PreprocessRequest(
        text=_text(rows, c.PRE_QUERY, c.TEXT_INPUT, i), messages=_text(rows, c.PRE_MESSAGES, c.MESSAGES, i),
        output_len=rows.scalar(c.PRE_REQUEST_OUTPUT_LEN, i),
        stop_words=_words(rows, c.PRE_STOP_WORDS_DICT, c.STOP_WORDS, i),
        bad_words=_words(rows, c.PRE_BAD_WORDS_DICT, c.BAD_WORDS, i),
        end_id=rows.scalar(c.PRE_END_ID, i), pad_id=rows.scalar(c.PRE_PAD_ID, i),
        bias_words=tuple(texts(rows.array(c.PRE_EMBEDDING_BIAS_WORDS, i), c.EMBEDDING_BIAS_WORDS)),
        bias_weights=() if weights is None else tuple(reals(weights, c.EMBEDDING_BIAS_WEIGHTS).tolist()))


def preprocess_arrays(pre: Preprocessor, inputs: Arrays) -> dict[str, np.ndarray]:
    """The preprocessing model's tensors in and out, for a batch of B prompts."""
    reject_unsupported(c.PREPROCESSING_INPUTS, inputs)
    out_len = inputs.get(c.PRE_REQUEST_OUTPUT_LEN)
    if out_len is None:
        raise InvalidRequestError(c.MAX_TOKENS, "is missing")
    batch = int(np.shape(out_len)[0]) if np.ndim(out_len) else 1
    if batch == 0:
        raise InvalidRequestError(c.MAX_TOKENS, "the request has no rows (batch size 0)")
    rows = BatchRows(inputs, batch)
    results = [pre(_request(rows, i)) for i in range(batch)]

    def col(values: list[int]) -> np.ndarray:
        return np.array(values, dtype=np.int32).reshape(batch, 1)

    return {
        c.PRE_INPUT_ID: _pad([r.input_ids for r in results], results[0].pad_id),
        c.PRE_REQUEST_INPUT_LEN: col([len(r.input_ids) for r in results]),
        # a decoder-only model has no decoder input: empty rows (upstream sends [pad_id])
        c.PRE_DECODER_INPUT_ID: np.zeros((batch, 0), dtype=np.int32),
        c.PRE_REQUEST_DECODER_INPUT_LEN: col([0] * batch),
        c.PRE_OUT_REQUEST_OUTPUT_LEN: col([r.output_len for r in results]),
        c.PRE_STOP_WORDS_IDS: _pad_word_lists([r.stop_words for r in results]),
        c.PRE_BAD_WORDS_IDS: _pad_word_lists([r.bad_words for r in results]),
        c.PRE_EMBEDDING_BIAS: _bias_rows(results, pre.tokenizer.vocab_size),
        c.PRE_OUT_END_ID: col([r.end_id for r in results]),
        c.PRE_OUT_PAD_ID: col([r.pad_id for r in results]),
    }

"""Preprocessing and postprocessing without a server: the functions the Triton models call."""
from __future__ import annotations

import json

import numpy as np
import pytest
from reference_chatml import HISTORY, IM_END, as_messages, reference_encoder, reference_make_context

from qwen_triton import InvalidRequestError
from qwen_triton.chat import QwenTiktokenTokenizer
from qwen_triton.serving import contract as c
from qwen_triton.serving.postprocess import Postprocessor, postprocess_arrays
from qwen_triton.serving.preprocess import Preprocessor, preprocess_arrays


@pytest.fixture(scope="module")
def qwen_tok():
    return QwenTiktokenTokenizer()


def b(text: str) -> np.ndarray:
    return np.array([[text.encode()]], dtype=object)


def i32(v: int) -> np.ndarray:
    return np.array([[v]], dtype=np.int32)


def messages_json(system, history, query) -> str:
    return json.dumps([{"role": m.role, "content": m.content} for m in as_messages(system, history, query)])


def test_preprocessing_chat_messages_are_qwen_chatml(qwen_tok):
    pre = Preprocessor(qwen_tok)
    out = preprocess_arrays(pre, {c.PRE_MESSAGES: b(messages_json(None, HISTORY, "讲个笑话 🙂")),
                                  c.PRE_REQUEST_OUTPUT_LEN: i32(16)})
    expected = reference_make_context(reference_encoder(), "讲个笑话 🙂", HISTORY, "You are a helpful assistant.",
                                      6144)
    assert out[c.PRE_INPUT_ID].tolist() == [expected]
    assert out[c.PRE_REQUEST_INPUT_LEN].tolist() == [[len(expected)]]
    assert out[c.PRE_OUT_END_ID].tolist() == [[IM_END]]
    # the second end id travels as a one-token stop word
    assert out[c.PRE_STOP_WORDS_IDS].tolist() == [[[151643], [1]]]


def test_preprocessing_words_and_batch(qwen_tok):
    pre = Preprocessor(qwen_tok)
    out = preprocess_arrays(pre, {
        c.PRE_QUERY: np.array([[b"hello"], ["你好世界".encode()]], dtype=object),
        c.PRE_REQUEST_OUTPUT_LEN: np.array([[4], [8]], dtype=np.int32),
        c.PRE_STOP_WORDS_DICT: np.array([[b"stop", b"<|im_end|>"], [b"x", b""]], dtype=object),
        c.PRE_END_ID: np.array([[7], [7]], dtype=np.int32)})
    assert out[c.PRE_INPUT_ID].shape[0] == 2 and out[c.PRE_STOP_WORDS_IDS].shape[:2] == (2, 2)
    stop = qwen_tok.encode("stop") + [IM_END]
    assert out[c.PRE_STOP_WORDS_IDS][0, 0, :len(stop)].tolist() == stop
    assert out[c.PRE_OUT_END_ID].tolist() == [[7], [7]]


@pytest.mark.parametrize("inputs, field", [
    ({c.PRE_REQUEST_OUTPUT_LEN: i32(4)}, "text_input"),
    ({c.PRE_QUERY: b(""), c.PRE_REQUEST_OUTPUT_LEN: i32(4)}, "text_input"),
    ({c.PRE_MESSAGES: b("[{not json"), c.PRE_REQUEST_OUTPUT_LEN: i32(4)}, "messages"),
    ({c.PRE_MESSAGES: b('[{"role": "robot", "content": "x"}]'), c.PRE_REQUEST_OUTPUT_LEN: i32(4)}, "messages"),
    ({c.PRE_QUERY: b("hi")}, "max_tokens"),
])
def test_preprocessing_bad_input(qwen_tok, inputs, field):
    with pytest.raises(InvalidRequestError) as err:
        preprocess_arrays(Preprocessor(qwen_tok), inputs)
    assert err.value.field == field


def test_preprocessing_limits(qwen_tok):
    pre = Preprocessor(qwen_tok, max_input_len=4, max_output_len=16)
    with pytest.raises(InvalidRequestError, match="max_output_len=16"):
        preprocess_arrays(pre, {c.PRE_QUERY: b("hi"), c.PRE_REQUEST_OUTPUT_LEN: i32(17)})
    with pytest.raises(InvalidRequestError, match="max_input_len=4"):
        preprocess_arrays(pre, {c.PRE_QUERY: b("one two three four five six"), c.PRE_REQUEST_OUTPUT_LEN: i32(8)})


def test_preprocessing_upstream_outputs(qwen_tok):
    """Upstream's extra outputs: no decoder input for a decoder-only model, the embedding bias."""
    pre = Preprocessor(qwen_tok)
    out = preprocess_arrays(pre, {c.PRE_QUERY: b("hi"), c.PRE_REQUEST_OUTPUT_LEN: i32(4)})
    assert out[c.PRE_DECODER_INPUT_ID].shape == (1, 0) and out[c.PRE_REQUEST_DECODER_INPUT_LEN].tolist() == [[0]]
    assert out[c.PRE_EMBEDDING_BIAS].shape == (1, 0)
    biased = preprocess_arrays(pre, {
        c.PRE_QUERY: b("hi"), c.PRE_REQUEST_OUTPUT_LEN: i32(4),
        c.PRE_EMBEDDING_BIAS_WORDS: np.array([[b"hello", b" world"]], dtype=object),
        c.PRE_EMBEDDING_BIAS_WEIGHTS: np.array([[2.5, -1.0]], dtype=np.float32)})
    bias = biased[c.PRE_EMBEDDING_BIAS]
    assert bias.shape == (1, qwen_tok.vocab_size)
    assert {int(t): float(bias[0, t]) for t in np.flatnonzero(bias[0])} == {
        **{t: 2.5 for t in qwen_tok.encode("hello")}, **{t: -1.0 for t in qwen_tok.encode(" world")}}


@pytest.mark.parametrize("inputs, field", [
    ({c.PRE_DECODER_QUERY: b("translate")}, "DECODER_QUERY"),
    ({"IMAGE_URL": b("http://x/cat.png")}, "IMAGE_URL"),
    ({c.PRE_EMBEDDING_BIAS_WORDS: np.array([[b"a", b"b"]], dtype=object),
      c.PRE_EMBEDDING_BIAS_WEIGHTS: np.array([[1.0]], dtype=np.float32)}, "embedding_bias_weights"),
    ({c.PRE_REQUEST_OUTPUT_LEN: i32(0)}, "max_tokens"),
])
def test_preprocessing_refuses_what_it_cannot_do(qwen_tok, inputs, field):
    with pytest.raises(InvalidRequestError) as err:
        preprocess_arrays(Preprocessor(qwen_tok), {c.PRE_QUERY: b("hi"), c.PRE_REQUEST_OUTPUT_LEN: i32(4), **inputs})
    assert err.value.field == field


def test_postprocessing_output_is_flat_like_upstream(qwen_tok):
    """OUTPUT is [batch * beams]: upstream's clients read text_output[0] as bytes."""
    a, b_ = qwen_tok.encode("a") + qwen_tok.encode("b"), qwen_tok.encode("c") + [0]
    out = postprocess_arrays(Postprocessor(qwen_tok), {
        c.POST_TOKENS_BATCH: np.array([[a], [b_]], dtype=np.int32),
        c.POST_SEQUENCE_LENGTH: np.array([[2], [1]], dtype=np.int32)})
    assert out[c.POST_OUTPUT].shape == (2,) and out[c.POST_OUTPUT].tolist() == [b"ab", b"c"]


@pytest.mark.parametrize("template", ["qwen", "chatml"])
def test_long_chats_are_trimmed_to_the_prompt_limit(qwen_tok, template):
    """1,000 user messages: the oldest are dropped so the prompt fits max_input_len (was: always refused,
    trimmed to 6,144 tokens, above the 2,048 limit)."""
    from qwen_triton.chat import QwenTiktokenTokenizer
    from qwen_triton.chat.template import CHATML_TEMPLATE

    tok = qwen_tok if template == "qwen" else QwenTiktokenTokenizer()
    if template == "chatml":
        tok._chat_template = CHATML_TEMPLATE  # an HF-style template: the other trimming path
    pre = Preprocessor(tok, max_input_len=2048)
    turns = []
    for i in range(1000):
        turns += [{"role": "user", "content": f"message {i}: " + "tell me more " * 5}]
        turns += [{"role": "assistant", "content": f"answer {i}"}]
    turns.append({"role": "user", "content": "the last question"})
    out = preprocess_arrays(pre, {c.PRE_MESSAGES: b(json.dumps([{"role": "system", "content": "be brief"}] + turns)),
                                  c.PRE_REQUEST_OUTPUT_LEN: i32(16)})
    ids = out[c.PRE_INPUT_ID][0].tolist()
    text = tok.decode(ids, skip_special=False)
    assert len(ids) <= 2048 and "be brief" in text and "the last question" in text and "message 0:" not in text
    assert "message 999:" in text  # the newest history is kept

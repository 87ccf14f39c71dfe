"""The serving layer without a server: the same functions the Triton models call."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from reference_chatml import HISTORY, IM_END, SCRIPTED_REPLY, as_messages, reference_encoder, reference_make_context
from scripted_checkpoint import write_scripted_qwen2

from qwen_triton import EngineConfig, InvalidRequestError
from qwen_triton.chat import QwenTiktokenTokenizer
from qwen_triton.serving import contract as c
from qwen_triton.serving.engine_service import EngineResponse, EngineService
from qwen_triton.serving.postprocess import Postprocessor, postprocess_arrays
from qwen_triton.serving.preprocess import Preprocessor, PreprocessRequest, preprocess_arrays


@pytest.fixture(scope="module")
def qwen_tok():
    return QwenTiktokenTokenizer()


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("scripted"))
    return path, write_scripted_qwen2(path, SCRIPTED_REPLY)


@pytest.fixture(scope="module")
def service(scripted):
    svc = EngineService(scripted[0], EngineConfig(device="cpu", dtype="float32", block_size=4))
    yield svc
    svc.shutdown()


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


def run(service: EngineService, inputs: dict, request_id: str) -> list[EngineResponse]:
    done = threading.Event()
    got: list[EngineResponse] = []

    def send(resp: EngineResponse) -> None:
        got.append(resp)
        if resp.final:
            done.set()

    service.submit(request_id, inputs, send)
    assert done.wait(60)
    return got


def engine_inputs(prompt: list[int], max_tokens: int, **extra) -> dict:
    inputs = {c.IN_INPUT_IDS: np.array([prompt], dtype=np.int32), c.IN_INPUT_LENGTHS: np.array([len(prompt)], np.int32),
              c.IN_REQUEST_OUTPUT_LEN: np.array([max_tokens], np.int32), c.IN_END_ID: np.array([IM_END], np.int32)}
    inputs.update(extra)
    return inputs


def test_scripted_checkpoint_streams_whole_characters(service, scripted, qwen_tok):
    _, reply_ids = scripted
    prompt = Preprocessor(qwen_tok)(PreprocessRequest(
        text=None, messages=json.dumps([{"role": "user", "content": "hi"}]), output_len=64)).input_ids
    post = Postprocessor(qwen_tok)
    streamed = run(service, engine_inputs(prompt, 64, **{c.IN_STREAMING: np.array([True])}), "s1")
    chunks = [post.decode(r.arrays[c.OUT_OUTPUT_IDS][0, 0].tolist()) for r in streamed if r.arrays is not None]
    assert "".join(chunks) == SCRIPTED_REPLY
    assert not any("\ufffd" in ch for ch in chunks)
    assert len(chunks) > 10  # really streamed, in small whole-character groups
    full = run(service, engine_inputs(prompt, 64), "s2")
    assert len(full) == 1 and full[0].final
    ids = full[0].arrays[c.OUT_OUTPUT_IDS][0, 0].tolist()
    assert ids == reply_ids  # prompt excluded by default; <|im_end|> ended the reply
    texts = postprocess_arrays(post, {c.POST_TOKENS_BATCH: full[0].arrays[c.OUT_OUTPUT_IDS],
                                      c.POST_SEQUENCE_LENGTH: full[0].arrays[c.OUT_SEQUENCE_LENGTH]})
    assert texts[c.POST_OUTPUT][0, 0].decode() == SCRIPTED_REPLY


@pytest.mark.parametrize("extra, field", [
    ({c.IN_TEMPERATURE: np.array([-1.0], np.float32)}, "temperature"),
    ({c.IN_TOP_P: np.array([0.0], np.float32)}, "top_p"),
    ({c.IN_BEAM_WIDTH: np.array([4], np.int32)}, "beam_width"),
    ({c.IN_REQUEST_OUTPUT_LEN: np.array([-3], np.int32)}, "max_tokens"),
    ({c.IN_REQUEST_OUTPUT_LEN: np.array([100000], np.int32)}, "max_tokens"),
    ({c.IN_INPUT_IDS: np.array([[1, 2], [3, 4]], np.int32)}, "input_ids"),
    ({c.IN_INPUT_IDS: np.array([[10**6]], np.int32), c.IN_INPUT_LENGTHS: np.array([1], np.int32)}, "prompt"),
])
def test_engine_bad_input_is_rejected_before_queueing(service, extra, field):
    with pytest.raises(InvalidRequestError) as err:
        service.submit("bad", engine_inputs([1, 2, 3], 8, **extra), lambda r: None)
    assert err.value.field == field
    assert service.stats().num_waiting == 0


def test_coalesce_merges_each_requests_queued_outputs_in_order():
    from qwen_triton.outputs import RequestOutput
    from qwen_triton.serving.engine_service import coalesce

    a, b = object(), object()

    def out(rid, toks, lps=None, finished=False):
        return RequestOutput(rid, toks, lps, finished, "length" if finished else None, 3, 0)

    batch = [(a, out("a", [1], [-0.1])), (b, out("b", [7])), (a, out("a", [2], [-0.2])),
             (a, out("a", [3], [-0.3], finished=True)), (b, out("b", [8]))]
    merged = coalesce(batch)
    assert [(live is a, o.new_token_ids, o.new_logprobs, o.finished) for live, o in merged] == [
        (True, [1, 2, 3], [-0.1, -0.2, -0.3], True), (False, [7, 8], None, False)]
    single = [(a, out("a", [5]))]
    assert coalesce(single) == single

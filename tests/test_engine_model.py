"""The engine model without a server: tensorrtllm_backend's semantics (sampling, batches, stop, decoupled
or not), through the same EngineService the Triton model calls."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from reference_chatml import IM_END, SCRIPTED_REPLY
from scripted_checkpoint import write_scripted_qwen2

from qwen_triton import EngineConfig, InvalidRequestError
from qwen_triton.chat import QwenTiktokenTokenizer
from qwen_triton.chat.defaults import GenerationDefaults
from qwen_triton.outputs import RequestOutput, TopLogprobs
from qwen_triton.serving import contract as c
from qwen_triton.serving.engine_request import ParseOptions, parse_engine_request
from qwen_triton.serving.engine_response import EngineResponse
from qwen_triton.serving.engine_service import EngineService, ServiceOptions, coalesce
from qwen_triton.serving.postprocess import Postprocessor
from qwen_triton.serving.preprocess import Preprocessor, PreprocessRequest

CHECKPOINT_DEFAULTS = GenerationDefaults(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05)
OPTS = ParseOptions(lambda end_id: (IM_END,) if end_id is None else (end_id,), CHECKPOINT_DEFAULTS)


def col(*values, dtype=np.int32) -> np.ndarray:
    return np.array(values, dtype=dtype)


def engine_inputs(prompt: list[int], max_tokens: int, **extra) -> dict:
    inputs = {c.IN_INPUT_IDS: np.array([prompt], dtype=np.int32), c.IN_INPUT_LENGTHS: col(len(prompt)),
              c.IN_REQUEST_OUTPUT_LEN: col(max_tokens)}
    inputs.update(extra)
    return inputs


def parse_one(**extra):
    (request,) = parse_engine_request(engine_inputs([1, 2, 3], 8, **extra), OPTS)
    return request


# -- parsing: TensorRT-LLM's semantics ----------------------------------------------------------------

def test_no_sampling_input_takes_the_checkpoint_defaults():
    p = parse_one().params
    assert (p.temperature, p.top_k, p.top_p, p.repetition_penalty) == (0.7, 20, 0.8, 1.05)


@pytest.mark.parametrize("extra, expected", [
    # any sampling input given: the others take TensorRT-LLM's defaults (top_k 0, top_p 0: greedy)
    ({c.IN_TEMPERATURE: col(1.0, dtype=np.float32)}, (1.0, 1, 1.0, 1.0, True)),
    ({c.IN_TOP_K: col(0), c.IN_TOP_P: col(0.0, dtype=np.float32)}, (1.0, 1, 1.0, 1.0, True)),
    # top_p 0 is "off", top_k still samples
    ({c.IN_TOP_K: col(5), c.IN_TOP_P: col(0.0, dtype=np.float32)}, (1.0, 5, 1.0, 1.0, False)),
    ({c.IN_TOP_K: col(0), c.IN_TOP_P: col(0.9, dtype=np.float32)}, (1.0, 0, 0.9, 1.0, False)),
    ({c.IN_REPETITION_PENALTY: col(1.2, dtype=np.float32)}, (1.0, 1, 1.0, 1.2, True)),
])
def test_sampling_follows_tensorrt_llm(extra, expected):
    p = parse_one(**extra).params
    assert (p.temperature, p.top_k, p.top_p, p.repetition_penalty, p.greedy) == pytest.approx(expected)


def test_upstream_names_and_values_reach_the_engine():
    r = parse_one(**{c.IN_MIN_LENGTH: col(5), c.IN_RANDOM_SEED: col(2**64 - 1, dtype=np.uint64),
                     c.IN_RETURN_LOG_PROBS: col(True, dtype=bool), c.IN_EXCLUDE_INPUT: col(True, dtype=bool),
                     c.IN_EMBEDDING_BIAS: np.array([[0, 0, 3.5, 0, -1.0]], dtype=np.float32),
                     c.IN_LEN_PENALTY: col(1.0, dtype=np.float32), c.IN_EARLY_STOPPING: col(True, dtype=bool),
                     c.IN_DECODER_INPUT_IDS: np.zeros((1, 0), np.int32),
                     "lora_task_id": col(0, dtype=np.uint64)})  # a zero LoRA id means none
    p = r.params
    assert (p.min_tokens, p.seed, p.logprobs, r.exclude_input) == (5, 2**64 - 1, True, True)
    assert p.logit_bias == ((2, 3.5), (4, -1.0))


def test_end_id_below_zero_means_no_end_id_and_exclude_defaults_to_false():
    r = parse_one(**{c.IN_END_ID: col(-1)})
    assert r.params.end_ids == () and r.exclude_input is False


@pytest.mark.parametrize("extra, field", [
    ({c.IN_TOP_P: col(1.5, dtype=np.float32)}, c.IN_TOP_P),
    ({c.IN_TEMPERATURE: col(-1.0, dtype=np.float32)}, "temperature"),
    ({c.IN_TEMPERATURE: col(np.nan, dtype=np.float32)}, c.IN_TEMPERATURE),
    ({c.IN_BEAM_WIDTH: col(4)}, c.IN_BEAM_WIDTH),
    ({c.IN_NUM_RETURN_SEQUENCES: col(2)}, c.IN_NUM_RETURN_SEQUENCES),
    ({c.IN_REQUEST_OUTPUT_LEN: col(0)}, c.IN_REQUEST_OUTPUT_LEN),
    ({c.IN_MIN_LENGTH: col(9)}, c.IN_MIN_LENGTH),
    ({c.IN_INPUT_LENGTHS: col(9)}, c.IN_INPUT_LENGTHS),
    ({c.IN_DECODER_INPUT_IDS: np.array([[5, 6]], np.int32)}, c.IN_DECODER_INPUT_IDS),
    ({"lora_task_id": col(3, dtype=np.uint64)}, "lora_task_id"),
    ({"runtime_top_p_decay": col(0.9, dtype=np.float32)}, "runtime_top_p_decay"),
    ({c.GUIDE_TYPE: np.array([[b"xml"]], dtype=object)}, c.GUIDE_TYPE),
    ({c.GUIDE: np.array([[b"[0-9]+"]], dtype=object)}, c.GUIDE_TYPE),
    ({c.GUIDE_TYPE: np.array([[b"regex"]], dtype=object)}, c.GUIDE),
    ({c.GUIDE_TYPE: np.array([[b"json"]], dtype=object), c.IN_MIN_LENGTH: col(2)}, c.IN_MIN_LENGTH),
    ({c.IN_EMBEDDING_BIAS: np.array([[np.inf]], np.float32)}, c.IN_EMBEDDING_BIAS),
    ({c.IN_TOP_LOGPROBS: col(21), c.IN_RETURN_LOG_PROBS: col(True, dtype=bool)}, c.IN_TOP_LOGPROBS),
    ({c.IN_TOP_LOGPROBS: col(-1), c.IN_RETURN_LOG_PROBS: col(True, dtype=bool)}, c.IN_TOP_LOGPROBS),
    ({c.IN_TOP_LOGPROBS: col(3)}, c.IN_TOP_LOGPROBS),  # needs return_log_probs
])
def test_bad_or_unsupported_input_names_the_field(extra, field):
    with pytest.raises(InvalidRequestError) as err:
        parse_one(**extra)
    assert err.value.field == field


def test_streaming_needs_a_decoupled_model():
    opts = ParseOptions(OPTS.end_ids_of, CHECKPOINT_DEFAULTS, decoupled=False)
    with pytest.raises(InvalidRequestError, match="decoupled"):
        parse_engine_request(engine_inputs([1], 4, **{c.IN_STREAMING: col(True, dtype=bool)}), opts)


def test_a_batch_is_one_request_per_row():
    inputs = {c.IN_INPUT_IDS: np.array([[1, 2, 3], [4, 5, 0]], np.int32), c.IN_INPUT_LENGTHS: col(3, 2),
              c.IN_REQUEST_OUTPUT_LEN: col(4, 6), c.IN_TEMPERATURE: col(0.0, dtype=np.float32)}
    rows = parse_engine_request(inputs, OPTS)
    assert [(r.prompt, r.params.max_tokens, r.batch_index, r.batch_size) for r in rows] == [
        ([1, 2, 3], 4, 0, 2), ([4, 5], 6, 1, 2)]
    with pytest.raises(InvalidRequestError, match="batch size 3"):
        parse_engine_request({**inputs, c.IN_REQUEST_OUTPUT_LEN: col(4, 4, 4)}, OPTS)


# -- the service: responses as tensorrtllm_backend shapes them --------------------------------------

@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("scripted"))
    return path, write_scripted_qwen2(path, SCRIPTED_REPLY)


def make_service(path, **options) -> EngineService:
    return EngineService(path, EngineConfig(device="cpu", dtype="float32", block_size=4),
                         options=ServiceOptions(**options))


@pytest.fixture(scope="module")
def service(scripted):
    svc = make_service(scripted[0])
    yield svc
    svc.shutdown()


@pytest.fixture(scope="module")
def chat_prompt():
    return Preprocessor(QwenTiktokenTokenizer())(PreprocessRequest(
        text=None, messages=json.dumps([{"role": "user", "content": "hi"}]), output_len=64)).input_ids


def run(service: EngineService, inputs: dict, key: str, **kw) -> list[EngineResponse]:
    done = threading.Event()
    got: list[EngineResponse] = []

    def send(resp: EngineResponse) -> None:
        got.append(resp)
        if resp.final:
            done.set()

    service.submit(key, inputs, send, **kw)
    assert done.wait(60)
    return got


def test_streams_whole_characters_without_the_prompt(service, chat_prompt):
    post = Postprocessor(QwenTiktokenTokenizer())
    streamed = run(service, engine_inputs(chat_prompt, 64, **{c.IN_STREAMING: col(True, dtype=bool)}), "s1")
    chunks = [post.decode(r.arrays[c.OUT_OUTPUT_IDS][0, 0].tolist()) for r in streamed if r.arrays is not None]
    assert "".join(chunks) == SCRIPTED_REPLY and not any("\ufffd" in ch for ch in chunks)
    # more than one chunk: it streamed (how many depends on load: a sender that falls behind the engine
    # merges a row's queued tokens into one response, engine_service.coalesce)
    assert len(chunks) > 1 and streamed[-1].final and sum(r.final for r in streamed) == 1


def test_non_streaming_echoes_the_prompt_unless_excluded(service, scripted, chat_prompt):
    _, reply_ids = scripted
    (full,) = run(service, engine_inputs(chat_prompt, 64), "n1")
    assert full.final and full.arrays[c.OUT_OUTPUT_IDS][0, 0].tolist() == chat_prompt + reply_ids
    assert full.arrays[c.OUT_SEQUENCE_LENGTH].tolist() == [[len(chat_prompt) + len(reply_ids)]]
    assert c.BATCH_INDEX not in full.arrays and c.CUM_LOG_PROBS not in full.arrays  # as upstream: not asked
    (short,) = run(service, engine_inputs(chat_prompt, 64, **{c.IN_EXCLUDE_INPUT: col(True, dtype=bool)}), "n2")
    assert short.arrays[c.OUT_OUTPUT_IDS][0, 0].tolist() == reply_ids


def test_a_batch_answers_each_row_with_its_batch_index(service, scripted, chat_prompt):
    _, reply_ids = scripted
    width = len(chat_prompt) + 1
    inputs = {c.IN_INPUT_IDS: np.array([chat_prompt + [0], chat_prompt + [0]], np.int32),
              c.IN_INPUT_LENGTHS: col(len(chat_prompt), len(chat_prompt)), c.IN_REQUEST_OUTPUT_LEN: col(64, 5),
              c.IN_EXCLUDE_INPUT: col(True, True, dtype=bool)}
    got = run(service, inputs, "b1")
    assert width and [r.final for r in got] == [False, True]
    by_row = {int(r.arrays[c.BATCH_INDEX][0, 0]): r.arrays[c.OUT_OUTPUT_IDS][0, 0].tolist() for r in got}
    assert by_row == {0: reply_ids, 1: reply_ids[:5]}


def test_not_decoupled_answers_once_for_the_whole_batch(scripted, chat_prompt):
    _, reply_ids = scripted
    svc = make_service(scripted[0], decoupled=False)
    try:
        inputs = {c.IN_INPUT_IDS: np.array([chat_prompt, chat_prompt], np.int32),
                  c.IN_INPUT_LENGTHS: col(len(chat_prompt), len(chat_prompt)), c.IN_REQUEST_OUTPUT_LEN: col(64, 3),
                  c.IN_EXCLUDE_INPUT: col(True, True, dtype=bool), c.IN_PAD_ID: col(7, 7)}
        (resp,) = run(svc, inputs, "nd1")
        ids = resp.arrays[c.OUT_OUTPUT_IDS]
        assert resp.final and ids.shape == (2, 1, len(reply_ids))
        assert ids[0, 0].tolist() == reply_ids and ids[1, 0].tolist() == reply_ids[:3] + [7] * (len(reply_ids) - 3)
        assert resp.arrays[c.OUT_SEQUENCE_LENGTH].tolist() == [[len(reply_ids)], [3]]
        assert resp.arrays[c.BATCH_INDEX].tolist() == [[0], [1]]
    finally:
        svc.shutdown()


def slow_inputs(prompt, **extra):
    """A long forced reply (no end id until max), streamed."""
    return engine_inputs(prompt, 400, **{c.IN_MIN_LENGTH: col(400), c.IN_STREAMING: col(True, dtype=bool),
                                         **extra})


def test_stop_ends_the_request_with_a_normal_final_response(service, chat_prompt):
    got: list[EngineResponse] = []
    done = threading.Event()
    service.submit("st1", slow_inputs(chat_prompt), lambda r: (got.append(r), r.final and done.set()),
                   client_id="client-7")
    while not got:
        time.sleep(0.01)
    assert service.stop("client-7") == 1 and done.wait(30)
    tokens = sum(r.arrays[c.OUT_OUTPUT_IDS].shape[-1] for r in got if r.arrays is not None)
    assert got[-1].final and got[-1].error is None and not got[-1].cancelled
    assert 0 < tokens < 400
    assert service.stop("nobody") == 0


def test_a_cancelled_client_ends_with_cancelled_and_is_never_asked_after_the_end(service, chat_prompt):
    asked = {"n": 0, "after_end": 0}
    finished = threading.Event()

    def is_cancelled():
        asked["n"] += 1
        asked["after_end"] += finished.is_set()
        return asked["n"] >= 3

    got = run(service, slow_inputs(chat_prompt), "cx1", is_cancelled=is_cancelled)
    finished.set()
    assert got[-1].cancelled and got[-1].final
    time.sleep(0.3)  # a few poll periods: nobody asks a finished request
    assert asked["after_end"] == 0
    assert service.live_count() == 0 and service.stats().num_free_blocks == service.stats().num_total_blocks


def test_top_logprobs_go_out_only_when_asked(service, scripted, chat_prompt):
    """qwen_triton_top_logprobs k: [1, 1, tokens, k] ids and log probabilities beside output_log_probs, streamed
    and not; the greedy reply's tokens are each position's top-1 and their log probabilities its entry."""
    _, reply_ids = scripted
    asked = {c.IN_RETURN_LOG_PROBS: col(True, dtype=bool), c.IN_TOP_LOGPROBS: col(3),
             c.IN_TEMPERATURE: col(0.0, dtype=np.float32), c.IN_EXCLUDE_INPUT: col(True, dtype=bool)}
    (whole,) = run(service, engine_inputs(chat_prompt, 64, **asked), "t1")
    streamed = run(service, engine_inputs(chat_prompt, 64, **asked, **{c.IN_STREAMING: col(True, dtype=bool)}), "t2")
    for arrays in [whole.arrays] + [r.arrays for r in streamed if r.arrays is not None]:
        ids, lps = arrays[c.OUT_TOP_IDS], arrays[c.OUT_TOP_LOGPROBS]
        n = arrays[c.OUT_OUTPUT_IDS].shape[-1]
        assert ids.shape == lps.shape == (1, 1, n, 3) and ids.dtype == np.int32 and lps.dtype == np.float32
        assert ids[0, 0, :, 0].tolist() == arrays[c.OUT_OUTPUT_IDS][0, 0].tolist()
        np.testing.assert_array_equal(lps[0, 0, :, 0], arrays[c.OUTPUT_LOG_PROBS][0, 0])
    assert whole.arrays[c.OUT_TOP_IDS][0, 0, :, 0].tolist() == reply_ids
    plain = {k: v for k, v in asked.items() if k != c.IN_TOP_LOGPROBS}
    (without,) = run(service, engine_inputs(chat_prompt, 64, **plain), "t3")
    assert c.OUT_TOP_IDS not in without.arrays and c.OUT_TOP_LOGPROBS not in without.arrays
    assert c.OUTPUT_LOG_PROBS in without.arrays


def test_coalesce_merges_each_rows_queued_outputs_in_order():
    a, b = object(), object()

    def out(rid, toks, lps=None, finished=False):
        return RequestOutput(rid, toks, lps, finished, "length" if finished else None, 3, 0)

    batch = [(a, 0, out("a", [1], [-0.1])), (b, 0, out("b", [7])), (a, 0, out("a", [2], [-0.2])),
             (a, 1, out("a1", [9])), (a, 0, out("a", [3], [-0.3], finished=True)), (b, 0, out("b", [8]))]
    merged = coalesce(batch)
    assert [(live is a, i, o.new_token_ids, o.new_logprobs, o.finished) for live, i, o in merged] == [
        (True, 0, [1, 2, 3], [-0.1, -0.2, -0.3], True), (False, 0, [7, 8], None, False), (True, 1, [9], None, False)]
    single = [(a, 0, out("a", [5]))]
    assert coalesce(single) == single
    tops = [TopLogprobs(np.array([[t, 0]], np.int32), np.array([[-0.5, -1.0]], np.float32)) for t in (4, 6)]
    first, second = (replace(out("a", [t], [-0.5]), new_top_logprobs=top) for t, top in zip((4, 6), tops))
    ((_, _, joined),) = coalesce([(a, 0, first), (a, 0, second)])
    assert joined.new_top_logprobs.token_ids.tolist() == [[4, 0], [6, 0]]


def test_cancel_guard_never_asks_after_the_final_response_and_never_blocks_it():
    """A final response that comes while a check runs goes out right after the check, from the checker;
    no check starts once the final response is on its way."""
    from qwen_triton.serving.triton_io import CancelGuard

    events: list[str] = []
    in_check, release = threading.Event(), threading.Event()

    def is_cancelled():
        events.append("check")
        in_check.set()
        release.wait(5)
        return False

    guard = CancelGuard(is_cancelled)
    checker = threading.Thread(target=guard.check)
    checker.start()
    assert in_check.wait(5)
    guard.finish(lambda: events.append("final"))  # returns at once: deferred to the checker
    assert events == ["check"] and not guard.finished
    release.set()
    checker.join(5)
    assert events == ["check", "final"] and guard.finished
    assert guard.check() is False and events == ["check", "final"]  # never asked again
    guard.finish(lambda: events.append("twice"))
    assert events == ["check", "final"]

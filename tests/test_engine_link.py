"""The engine link (qwen_triton/serving/link_server.py, link_client.py) between a LinkClient and a real
EngineService on a tiny checkpoint, without Triton: what the entry models see of our engine. Streams,
batches, stop and cancel behave as over BLS; a client that goes away has its requests aborted in the
engine; an engine that goes away ends every waiting request with a `gone` event naming why."""
from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from reference_chatml import SCRIPTED_REPLY
from scripted_checkpoint import write_scripted_qwen2

from qwen_triton import EngineConfig
from qwen_triton.chat import QwenTiktokenTokenizer
from qwen_triton.serving import contract as c
from qwen_triton.serving import link_wire as w
from qwen_triton.serving.bls import ResponseDecoder
from qwen_triton.serving.engine_calls import Failure, LinkEngine
from qwen_triton.serving.engine_service import EngineService
from qwen_triton.serving.engine_watch import write_pid_file
from qwen_triton.serving.link_client import GONE, LinkClient
from qwen_triton.serving.link_server import LinkServer
from qwen_triton.serving.preprocess import Preprocessor, PreprocessRequest

MODEL, INSTANCE = c.ENGINE, f"{c.ENGINE}_0_0"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("scripted"))
    write_scripted_qwen2(path, SCRIPTED_REPLY)
    svc = EngineService(path, EngineConfig(device="cpu", dtype="float32", block_size=4))
    yield svc
    svc.shutdown()


def serve(service: EngineService, run_dir) -> LinkServer:
    """A link server where clients find it: its socket beside a pid file, as the engine model does."""
    server = LinkServer(service, w.link_path(run_dir, MODEL, INSTANCE))
    write_pid_file(run_dir, MODEL, INSTANCE)
    return server


@pytest.fixture(scope="module")
def linked(service, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    server = serve(service, run_dir)
    client = LinkClient(run_dir, MODEL)
    yield client, server
    client.close()
    server.close()


@pytest.fixture(scope="module")
def tokenizer():
    return QwenTiktokenTokenizer()


@pytest.fixture(scope="module")
def prompt(tokenizer):
    return Preprocessor(tokenizer)(PreprocessRequest(
        text=None, messages=json.dumps([{"role": "user", "content": "hi"}]), output_len=64)).input_ids


def inputs(prompt: list[int], max_tokens: int, rows: int = 1, **extra) -> dict:
    out = {c.IN_INPUT_IDS: np.array([prompt] * rows, np.int32), c.IN_INPUT_LENGTHS: np.full((rows, 1), len(prompt),
                                                                                              np.int32),
           c.IN_REQUEST_OUTPUT_LEN: np.full((rows, 1), max_tokens, np.int32),
           c.IN_EXCLUDE_INPUT: np.ones((rows, 1), bool)}
    out.update(extra)
    return out


def streaming(prompt, max_tokens=64, **extra):
    return inputs(prompt, max_tokens, **{c.IN_STREAMING: np.ones((1, 1), bool), **extra})


def slow(prompt):
    """A long forced reply (no end id until max), streamed."""
    return streaming(prompt, 400, **{c.IN_MIN_LENGTH: np.full((1, 1), 400, np.int32)})


def text_of(events, tokenizer, rows: int = 1, stream: bool = True) -> list[str]:
    """The entry model's decoding of a request's responses (bls.ResponseDecoder), per row."""
    decoder, texts = ResponseDecoder(tokenizer, rows), [""] * rows
    for event in events:
        if event.kind == w.RESPONSE and event.arrays:
            part = decoder.push(event.arrays, stream)
            index = event.arrays.get(c.BATCH_INDEX)
            for i, text in enumerate(part[c.TEXT_OUTPUT]):
                texts[int(index[i, 0]) if index is not None else i] += text.decode()
    return texts


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_a_stream_arrives_whole_characters_in_order(linked, prompt, tokenizer):
    client, _ = linked
    events = list(client.call("s1", streaming(prompt)))
    assert events[0].kind == w.ACCEPTED and events[-1].ends and events[-1].final
    assert all(e.kind in (w.ACCEPTED, w.RESPONSE) for e in events)
    assert text_of(events, tokenizer) == [SCRIPTED_REPLY] and len(events) > 10


def test_batch_rows_each_with_their_index(linked, prompt, tokenizer):
    client, _ = linked
    events = list(client.call("b1", inputs(prompt, 64, rows=2, **{c.IN_REQUEST_OUTPUT_LEN: np.array([[64], [5]],
                                                                                                       np.int32)})))
    answers = [e for e in events if e.kind == w.RESPONSE]
    assert [e.final for e in answers] == [False, True]
    reply = tokenizer.encode(SCRIPTED_REPLY)
    by_row = {int(e.arrays[c.BATCH_INDEX][0, 0]): e.arrays[c.OUT_OUTPUT_IDS][0, 0].tolist() for e in answers}
    assert by_row == {0: reply, 1: reply[:5]}


def test_bad_input_is_an_error_naming_the_field(linked, prompt):
    client, _ = linked
    (event,) = client.call("e1", inputs(prompt, 0))
    assert event.kind == w.ERROR and event.code == "INVALID_ARG" and "request_output_len" in event.message
    failures = list(LinkEngine(client).responses("e2", inputs(prompt, 0)))
    assert len(failures) == 1 and isinstance(failures[0], Failure) and failures[0].code == "INVALID_ARG"


def test_stop_ends_the_request_normally_and_cancel_as_cancelled(linked, service, prompt):
    client, _ = linked
    stopped = client.call("st1", slow(prompt), client_id="client-7")
    assert next(stopped).kind == w.ACCEPTED and next(stopped).kind == w.RESPONSE
    client.stop("client-7")
    rest = list(stopped)
    assert rest[-1].kind == w.RESPONSE and rest[-1].final
    assert 0 < sum(e.arrays[c.OUT_OUTPUT_IDS].shape[-1] for e in rest if e.arrays) < 400
    aborted = service.stats().num_aborted
    cancelled = client.call("cx1", slow(prompt))
    assert next(cancelled).kind == w.ACCEPTED and next(cancelled).kind == w.RESPONSE
    client.cancel("cx1")
    assert list(cancelled)[-1].kind == w.CANCELLED
    assert service.stats().num_aborted == aborted + 1
    assert wait_for(lambda: service.live_count() == 0)
    left = client.call("left1", slow(prompt))  # a caller that stops reading before the end cancels it
    assert next(left).kind == w.ACCEPTED and next(left).kind == w.RESPONSE
    left.close()
    assert wait_for(lambda: service.live_count() == 0 and service.stats().num_aborted == aborted + 2)


def test_a_client_that_goes_away_has_its_requests_aborted(linked, service, prompt):
    _, server = linked
    client = LinkClient(server.path.parent, MODEL)
    before, free = service.stats().num_aborted, service.stats().num_total_blocks
    calls = [client.call(f"gone{i}", slow(prompt)) for i in range(3)]
    for call in calls:
        assert next(call).kind == w.ACCEPTED and next(call).kind == w.RESPONSE
    assert service.live_count() == 3 and server.connections() == 2
    client.close()  # as when the entry model's process dies: the connection ends
    assert wait_for(lambda: service.live_count() == 0 and server.connections() == 1)
    assert wait_for(lambda: service.stats().num_aborted == before + 3)
    assert wait_for(lambda: service.stats().num_free_blocks == free)
    assert all(list(call)[-1].kind == GONE for call in calls)


def test_an_engine_that_goes_away_ends_every_waiting_request_and_comes_back(service, prompt, tokenizer, tmp_path):
    server = serve(service, tmp_path)
    client = LinkClient(tmp_path, MODEL)
    ended: queue.Queue = queue.Queue()
    calls = [client.call(f"w{i}", slow(prompt)) for i in range(4)]
    for call in calls:
        assert next(call).kind == w.ACCEPTED
        threading.Thread(target=lambda call=call: ended.put(list(call)[-1]), daemon=True).start()
    server.close("the engine model is being unloaded")
    last = [ended.get(timeout=30) for _ in calls]
    assert all(e.kind == GONE and "being unloaded" in e.message for e in last), last
    assert not server.path.exists()
    (refused,) = client.call("after", streaming(prompt))  # no engine: at once, naming why
    assert refused.kind == GONE and "not reachable" in refused.message
    assert wait_for(lambda: service.live_count() == 0)
    again = serve(service, tmp_path)  # the engine restarted: the next call connects again
    try:
        assert text_of(client.call("back", streaming(prompt)), tokenizer) == [SCRIPTED_REPLY]
    finally:
        client.close()
        again.close()


def test_a_reloaded_engine_takes_over_from_the_old_instance(service, prompt, tokenizer, tmp_path):
    """Triton reloads a model by starting the new instance (same name: same pid file, same socket path)
    before finalizing the old one; the old one's close must leave the new one's files in place."""
    from qwen_triton.serving.engine_watch import release_pid_file

    old = serve(service, tmp_path)
    client = LinkClient(tmp_path, MODEL)
    try:
        assert text_of(client.call("before", streaming(prompt)), tokenizer) == [SCRIPTED_REPLY]
        new = serve(service, tmp_path)  # binds the same path
        pid_file = tmp_path / f"{MODEL}-{INSTANCE}.pid"
        pid_file.write_text(str(os.getppid()))  # the new instance's process
        old.close("the engine model is being unloaded")
        release_pid_file(pid_file)  # the old instance's finalize
        assert new.path.exists() and pid_file.exists()
        # the client learns its old connection ended, then finds the new instance at the same path
        assert wait_for(lambda: text_of(client.call("after", streaming(prompt)), tokenizer) == [SCRIPTED_REPLY])
        assert new.connections() >= 1
    finally:
        client.close()
        new.close()
    release_pid_file(pid_file)
    assert pid_file.exists()  # not this process's pid: left alone
    pid_file.write_text(str(os.getpid()))
    release_pid_file(pid_file)
    assert not pid_file.exists()


def test_an_engine_that_dies_is_named_dead(tmp_path):
    """An engine process that dies ends its connections without a word (unlike close): 'died'."""
    path = w.link_path(tmp_path, MODEL, INSTANCE)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    write_pid_file(tmp_path, MODEL, INSTANCE)
    client = LinkClient(tmp_path, MODEL)
    call = client.call("d1", {c.IN_INPUT_IDS: np.ones((1, 1), np.int32)})
    taken = threading.Thread(target=lambda: listener.accept()[0].close())
    taken.start()
    (event,) = call
    taken.join()
    listener.close()
    assert event.kind == GONE and f"the engine process (pid {os.getpid()}) died" in event.message


def test_hundreds_of_concurrent_streams_lose_nothing(linked, service, prompt, tokenizer):
    """The GPU soak's burst (hundreds of streams at once crashed the BLS stubs), over the link: every call
    ends with its whole reply, streamed or not."""
    client, _ = linked
    reply = tokenizer.encode(SCRIPTED_REPLY)
    n = next(n for n in range(6, len(reply)) if "\ufffd" not in tokenizer.decode(reply[:n]))  # whole characters
    expected = tokenizer.decode(reply[:n])

    def one(i: int) -> str:
        stream = i % 2 == 0
        body = streaming(prompt, n) if stream else inputs(prompt, n)
        return text_of(client.call(f"many{i}", body), tokenizer, stream=stream)[0]

    with ThreadPoolExecutor(300) as pool:
        texts = list(pool.map(one, range(300)))
    assert texts == [expected] * 300
    assert wait_for(lambda: service.live_count() == 0)
    stats = service.stats()
    assert stats.num_free_blocks == stats.num_total_blocks

"""The engine link's wire (qwen_triton/serving/link_wire.py): every array the contract carries comes back
equal, in dtype and shape; what is not well formed is refused with LinkError, never half read."""
from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qwen_triton.serving import link_wire as w

NUMERIC = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64"]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)


def numeric_arrays():
    return st.sampled_from(NUMERIC).flatmap(lambda dt: hnp.arrays(np.dtype(dt), shapes))


def bytes_arrays():
    return shapes.flatmap(lambda shape: st.lists(st.binary(max_size=12), min_size=int(np.prod(shape)),
                                                 max_size=int(np.prod(shape))).map(
        lambda items, shape=shape: _objects(items, shape)))


def _objects(items: list[bytes], shape) -> np.ndarray:
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out.reshape(shape)


def round_trip(message: w.Message) -> w.Message:
    return w.read_message(io.BufferedReader(io.BytesIO(w.encode(message))))


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    if a.dtype == np.object_:
        assert b.dtype == np.object_ and [bytes(x) for x in a.reshape(-1)] == list(b.reshape(-1))
    else:
        assert b.dtype == a.dtype and a.tobytes() == b.tobytes()  # bit for bit: NaNs and -0.0 too


@settings(max_examples=200, deadline=None)
@given(arrays=st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(numeric_arrays(), bytes_arrays()),
                              max_size=5),
       op=st.sampled_from(sorted(w.CLIENT_OPS | w.ENGINE_OPS)), rid=st.text(max_size=20),
       fields=st.dictionaries(st.text(max_size=6), st.one_of(st.booleans(), st.integers(-2**40, 2**40),
                                                             st.text(max_size=10)), max_size=3))
def test_every_message_comes_back_equal(arrays, op, rid, fields):
    got = round_trip(w.Message(op, rid, fields, arrays))
    assert (got.op, got.id, dict(got.fields)) == (op, rid, fields)
    assert list(got.arrays) == list(arrays)
    for name, array in arrays.items():
        assert_same(array, got.arrays[name])
        assert got.arrays[name].flags.writeable


def test_text_and_fixed_bytes_arrive_as_bytes_and_views_are_sent_whole():
    strided = np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2]  # not contiguous
    big_endian = np.array([[1, 2]], dtype=">i8")
    got = round_trip(w.Message(w.SUBMIT, "r", arrays={"s": np.array([["hé", "x"]]), "b": np.array([b"ab"]),
                                                      "v": strided, "be": big_endian})).arrays
    assert got["s"].tolist() == [["hé".encode(), b"x"]] and got["b"].tolist() == [b"ab"]
    assert np.array_equal(got["v"], strided) and got["be"].dtype == np.int64 and got["be"].tolist() == [[1, 2]]


def test_several_messages_in_one_stream_then_the_end():
    frames = b"".join(w.encode(w.Message(w.RESPONSE, str(i), {"final": i == 2},
                                         {"ids": np.full((1, 1, i), i, np.int32)})) for i in range(3))
    stream = io.BufferedReader(io.BytesIO(frames))
    got = [w.read_message(stream) for _ in range(3)]
    assert [m.arrays["ids"].shape for m in got] == [(1, 1, 0), (1, 1, 1), (1, 1, 2)]
    assert [m.fields["final"] for m in got] == [False, False, True]
    assert w.read_message(stream) is None


@pytest.mark.parametrize("array", [np.array([None], dtype=object), np.array([1], dtype=object),
                                   np.array([1 + 2j]), np.array(["2020-01-01"], dtype="datetime64[D]")])
def test_what_the_link_cannot_carry_is_refused_when_sending(array):
    with pytest.raises(w.LinkError):
        w.encode(w.Message(w.SUBMIT, "r", arrays={"x": array}))


def _frame(header: dict, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + body


def _array(name="x", dtype="int32", shape=(2,), nbytes=8) -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape), "nbytes": nbytes}


@pytest.mark.parametrize("frame", [
    b"\x00\x00",  # ends inside the length
    struct.pack(">I", 10) + b"{}",  # ends inside the header
    struct.pack(">I", w.MAX_HEADER_BYTES + 1),  # a header over the limit
    struct.pack(">I", 8) + b"not json",
    struct.pack(">I", 2) + b"\xff\xfe",  # not UTF-8
    _frame(["submit"]),
    _frame({"op": "explode"}),
    _frame({"op": "submit", "id": 7}),
    _frame({"op": "submit", "arrays": {"x": 1}}),
    _frame({"op": "submit", "arrays": [_array(dtype="complex64")]}, b"\0" * 8),
    _frame({"op": "submit", "arrays": [_array(dtype="object")]}, b"\0" * 8),
    _frame({"op": "submit", "arrays": [_array(shape=(-2,))]}, b"\0" * 8),
    _frame({"op": "submit", "arrays": [_array(shape=(1,) * 9, nbytes=4)]}, b"\0" * 4),
    _frame({"op": "submit", "arrays": [_array(nbytes=7)]}, b"\0" * 7),  # 7 bytes cannot be 2 int32
    _frame({"op": "submit", "arrays": [_array(nbytes=8)]}, b"\0" * 5),  # ends inside the arrays
    _frame({"op": "submit", "arrays": [_array(shape=(10**12,), nbytes=4 * 10**12)]}),  # over the limit
    _frame({"op": "submit", "arrays": [_array(dtype="bytes", shape=(3,), nbytes=8)]}, b"\0" * 8),  # 3 > 8 / 4
    _frame({"op": "submit", "arrays": [_array(dtype="bytes", shape=(1,), nbytes=6)]},
           struct.pack(">I", 5) + b"ab"),  # an element longer than its array
    _frame({"op": "submit", "arrays": [_array(dtype="bytes", shape=(1,), nbytes=7)]},
           struct.pack(">I", 1) + b"abc"),  # bytes left over
])
def test_frames_that_are_not_well_formed_raise_link_error(frame):
    with pytest.raises(w.LinkError):
        w.read_message(io.BufferedReader(io.BytesIO(frame)))


def test_a_reader_refuses_the_ops_of_the_other_side():
    frame = w.encode(w.Message(w.RESPONSE, "r", {"final": True}))
    with pytest.raises(w.LinkError, match="unknown op"):
        w.read_message(io.BufferedReader(io.BytesIO(frame)), w.CLIENT_OPS)


def test_a_socket_path_too_long_for_unix_moves_to_the_temp_folder(tmp_path):
    short = w.link_path(tmp_path, "tensorrt_llm", "tensorrt_llm_0_0")
    assert short.parent == tmp_path and short.name == "tensorrt_llm-tensorrt_llm_0_0.sock"
    deep = w.link_path(tmp_path / ("d" * 120), "tensorrt_llm", "tensorrt_llm_0_0")
    assert len(str(deep)) <= 107 and deep == w.link_path(tmp_path / ("d" * 120), "tensorrt_llm", "tensorrt_llm_0_0")

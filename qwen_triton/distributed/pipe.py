"""Rank 0's commands to the other ranks: length-prefixed pickles over each worker's stdin pipe.

The pipe joins processes of one engine, started together by rank 0 (never a socket others can reach), so
pickle carries the numpy arrays of a step (HostBatch) with one copy. A worker reading end-of-file knows
rank 0 is gone.
"""
from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..config import EngineConfig

_HEADER = struct.Struct("<Q")  # payload bytes


@dataclass(frozen=True)
class WorkerSpec:
    """What rank `rank` needs to join: the checkpoint, the engine's settings and rank 0's store port."""

    model_path: str
    config: EngineConfig
    max_model_len: int
    rank: int
    size: int
    store_port: int
    timeout_s: float


def joined_key(rank: int) -> str:
    """The store key a worker sets once it reached the store: rank 0 then knows it is up."""
    return f"joined/{rank}"


def write_message(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def read_message(stream: BinaryIO) -> Any:
    """The next message; EOFError when the writer closed the pipe (or died)."""
    (size,) = _HEADER.unpack(_read_exactly(stream, _HEADER.size))
    return pickle.loads(_read_exactly(stream, size))


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) < size:
        raise EOFError("the pipe closed")
    return data

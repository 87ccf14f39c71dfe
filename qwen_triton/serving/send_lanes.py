"""Where the engine's responses are sent from: one thread per calling process.

A response the engine model sends to a BLS caller (our entry models) runs the caller's response callback
inside tritonserver, and the Python backend (2.51, python_be.cc SendBLSDecoupledResponse) waits there
until the caller's process has read it: forever when that process has died. With one sender thread, one
dead entry model stopped every stream of every model (the GPU soak, docs/reliability.md). So each caller
process (contract.REQUEST_PARAM_CALLER; 0 for clients of the engine model itself, whom Triton answers
without a stub) gets a lane: a queue and a thread sending its responses in order. When a caller's process
dies, its lane is closed: what it still holds is dropped, and what comes for it later too. A thread caught
in a send to the dead process stays there: one thread per dead caller (and one of the engine's parent
threads in the Python backend).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from ..runtime.process import pid_alive

Item = Any  # what the service queues for one response: (live request, row index, RequestOutput)
SendBatch = Callable[[list[Item]], None]


class _Lane:
    """One caller's queue and sender thread."""

    def __init__(self, caller: int, send_batch: SendBatch):
        self.queue: queue.Queue[Item | None] = queue.Queue()
        self.closed = False
        self.thread = threading.Thread(target=self._run, args=(send_batch,), daemon=True,
                                       name=f"qwen-triton-sender-{caller}")
        self.thread.start()

    def close(self) -> None:
        self.closed = True
        self.queue.put(None)

    def _run(self, send_batch: SendBatch) -> None:
        while (batch := self._next_batch()) is not None:
            if not self.closed:
                send_batch(batch)

    def _next_batch(self) -> list[Item] | None:
        """Wait for one item, then take every item already queued (None: the lane is closed)."""
        first = self.queue.get()
        if first is None:
            return None
        batch = [first]
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return batch
            if item is None:
                self.queue.put(None)  # end after this batch
                return batch
            batch.append(item)


class SendLanes:
    """The lanes of one engine service. `send_batch` sends a batch of queued items, in order; `alive`
    tells whether a caller's process is still there."""

    def __init__(self, send_batch: SendBatch, alive: Callable[[int], bool] = pid_alive):
        self._send_batch = send_batch
        self._alive = alive
        self._lock = threading.Lock()
        self._lanes: dict[int, _Lane] = {}
        self._dead: set[int] = set()  # callers whose lane was closed: what comes for them is dropped

    def put(self, caller: int, item: Item) -> None:
        """Queue an item on its caller's lane (started on first use); dropped when the caller died."""
        with self._lock:
            if caller in self._dead:
                return
            lane = self._lanes.get(caller)
            if lane is None:
                lane = self._lanes[caller] = _Lane(caller, self._send_batch)
        lane.queue.put(item)

    def reap(self) -> list[int]:
        """Close the lanes of callers whose process died; returns their process ids."""
        with self._lock:
            dead = [pid for pid in self._lanes if pid and not self._alive(pid)]
            lanes = [self._lanes.pop(pid) for pid in dead]
            self._dead.update(dead)
        for lane in lanes:
            lane.close()
        return dead

    def callers(self) -> list[int]:
        with self._lock:
            return list(self._lanes)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Close every lane; wait up to `timeout` for each to finish what it holds."""
        with self._lock:
            lanes, self._lanes = list(self._lanes.values()), {}
        for lane in lanes:
            lane.queue.put(None)  # not `closed`: what is queued still goes out
        for lane in lanes:
            lane.thread.join(timeout)

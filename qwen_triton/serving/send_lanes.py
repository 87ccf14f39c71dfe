"""Where the engine's responses are sent from: one thread per caller.

A caller is one connection of the engine link (link_server.py: one per entry model process), or 0 for the
clients of the engine model itself, whom Triton answers. Each caller gets a lane: a queue and a thread that
sends its responses in order, so a send that blocks (a peer that stopped reading) holds up only its own
caller, never the step loop or another caller (the GPU soak found one dead entry model stopping every stream
of every model when all responses went out on one thread, docs/reliability.md). When a caller goes away
(its connection closed), its lane is closed: what it still holds is dropped, and what comes for it later too.
"""
from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any

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
    """The lanes of one engine service. `send_batch` sends a batch of queued items, in order."""

    def __init__(self, send_batch: SendBatch):
        self._send_batch = send_batch
        self._lock = threading.Lock()
        self._lanes: dict[int, _Lane] = {}
        self._dead: set[int] = set()  # closed callers (never reused): what comes for them is dropped
        self._numbers = itertools.count(1)  # 0 is Triton's clients

    def new_caller(self) -> int:
        """A caller number never used before (one per engine link connection)."""
        return next(self._numbers)

    def put(self, caller: int, item: Item) -> None:
        """Queue an item on its caller's lane (started on first use); dropped once the caller is closed."""
        with self._lock:
            if caller in self._dead:
                return
            lane = self._lanes.get(caller)
            if lane is None:
                lane = self._lanes[caller] = _Lane(caller, self._send_batch)
        lane.queue.put(item)

    def close(self, caller: int) -> None:
        """The caller went away: its lane stops sending, what it holds and what comes later is dropped.
        Safe from any thread, the lane's own included (it does not wait for the lane's thread)."""
        with self._lock:
            lane = self._lanes.pop(caller, None)
            self._dead.add(caller)
        if lane is not None:
            lane.close()

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

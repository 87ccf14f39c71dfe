"""send_lanes: each caller's responses in order on its own thread; a send that never returns holds up
only its caller; a dead caller's lane is closed and what comes for it is dropped."""
from __future__ import annotations

import threading
import time

from qwen_triton.serving.send_lanes import SendLanes


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_each_caller_in_order_and_a_stuck_send_holds_up_only_its_caller():
    sent: list[tuple[int, int]] = []
    stuck = threading.Event()

    def send_batch(batch):
        for caller, n in batch:
            if caller == 7:
                stuck.wait()  # a send to a dead process: never returns (until the test ends)
            sent.append((caller, n))

    lanes = SendLanes(send_batch, alive=lambda pid: True)
    lanes.put(7, (7, 0))
    for n in range(50):
        lanes.put(0, (0, n))
        lanes.put(3, (3, n))
    assert _wait(lambda: len(sent) == 100)
    assert [n for caller, n in sent if caller == 0] == list(range(50))
    assert [n for caller, n in sent if caller == 3] == list(range(50))
    assert sorted(lanes.callers()) == [0, 3, 7]
    stuck.set()
    lanes.shutdown(timeout=2)
    assert (7, 0) in sent


def test_a_dead_callers_lane_is_closed_and_its_items_dropped():
    alive = {5: True}
    sent: list[int] = []
    lanes = SendLanes(lambda batch: sent.extend(batch), alive=lambda pid: alive[pid])
    lanes.put(5, 1)
    lanes.put(0, 2)  # the engine model's own clients: never reaped
    assert _wait(lambda: sorted(sent) == [1, 2])
    assert lanes.reap() == []
    alive[5] = False
    assert lanes.reap() == [5]
    lanes.put(5, 3)
    lanes.put(0, 4)
    assert _wait(lambda: 4 in sent)
    assert 3 not in sent and lanes.callers() == [0]
    lanes.shutdown(timeout=2)

"""send_lanes: each caller's responses in order on its own thread; a send that never returns holds up
only its caller; a closed caller's lane (its engine link connection ended) drops what comes for it."""
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
                stuck.wait()  # a send to a peer that stopped reading: never returns (until the test ends)
            sent.append((caller, n))

    lanes = SendLanes(send_batch)
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


def test_a_closed_callers_lane_drops_its_items_and_numbers_are_never_reused():
    sent: list[int] = []
    lanes = SendLanes(lambda batch: sent.extend(batch))
    caller = lanes.new_caller()
    assert caller > 0  # 0 is Triton's clients
    lanes.put(caller, 1)
    lanes.put(0, 2)
    assert _wait(lambda: sorted(sent) == [1, 2])
    lanes.close(caller)
    lanes.close(caller)  # twice: no harm
    lanes.put(caller, 3)
    lanes.put(0, 4)
    assert _wait(lambda: 4 in sent)
    assert 3 not in sent and lanes.callers() == [0]
    assert lanes.new_caller() not in (0, caller)
    lanes.shutdown(timeout=2)

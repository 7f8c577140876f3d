"""The model lock serves waiters by priority (an answer's next step before an ingest's next
chunk), then in arrival order, and one holder at a time."""

from __future__ import annotations

import threading
import time

from longwatch.stream.model_lock import ARCHIVE, ASK, LIVE, ModelLock


def wait_for_waiters(lock: ModelLock, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(lock._waiting) < n:  # the waiters are queued: the order below is not a race
        assert time.monotonic() < deadline, "the waiters never queued"
        time.sleep(0.001)


def test_waiters_are_served_by_priority_then_arrival() -> None:
    lock = ModelLock()
    order: list[str] = []
    inside = 0
    most_inside = 0
    guard = threading.Lock()

    def take(name: str, priority: int) -> None:
        nonlocal inside, most_inside
        with lock.hold(priority):
            with guard:
                inside += 1
                most_inside = max(most_inside, inside)
            order.append(name)
            time.sleep(0.002)
            with guard:
                inside -= 1

    threads = []
    with lock.hold(ASK):  # the model is busy while everyone queues
        for n, (name, priority) in enumerate(
            [("archive-1", ARCHIVE), ("live-1", LIVE), ("ask-1", ASK), ("archive-2", ARCHIVE), ("ask-2", ASK)]
        ):
            threads.append(threading.Thread(target=take, args=(name, priority)))
            threads[-1].start()
            wait_for_waiters(lock, n + 1)
    for t in threads:
        t.join(10)
    assert order == ["ask-1", "ask-2", "live-1", "archive-1", "archive-2"]
    assert most_inside == 1 and not lock._waiting


def test_a_holder_that_raises_lets_the_next_in() -> None:
    lock = ModelLock()
    try:
        with lock.hold(ARCHIVE):
            raise RuntimeError("a failed pass")
    except RuntimeError:
        pass
    got = threading.Event()

    def take() -> None:
        with lock.hold(ASK):
            got.set()

    threading.Thread(target=take).start()
    assert got.wait(5)

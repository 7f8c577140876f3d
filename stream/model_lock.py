"""The model's one lock, granted by priority: the next step of an answer goes before the next chunk of
an ingest.

One forward pass at a time runs on the model (the summary-token mask reaches the projections through
module state for the length of a pass). Ask takes the lock for each step of an answer (its question
vector, its prefill, each decoding step) and ingest for each chunk's vision tower and summary pass;
with a plain lock any waiter may win, so beside a few busy ingests an answer waited behind one
chunk after another. Here waiters are served by priority, then in arrival order: ASK, then LIVE
(frames a camera keeps sending), then ARCHIVE (a file that can wait).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

ASK, LIVE, ARCHIVE = 0, 1, 2


class ModelLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._waiting: list[tuple[int, int]] = []  # heap of (priority, arrival)
        self._arrivals = itertools.count()

    def asks_waiting(self) -> bool:
        """Whether an answer's step waits for the model (work that could be split should be)."""
        with self._cond:
            return any(priority == ASK for priority, _ in self._waiting)

    @contextmanager
    def hold(self, priority: int) -> Iterator[None]:
        """Hold the model; among waiters the lowest priority number goes first, then the earliest."""
        with self._cond:
            ticket = (priority, next(self._arrivals))
            heapq.heappush(self._waiting, ticket)
            while self._held or self._waiting[0] != ticket:
                self._cond.wait()
            heapq.heappop(self._waiting)
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()

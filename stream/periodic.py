"""A task the service runs every so often on a thread of its own (the storage sweeper, lease renewal)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from longwatch.memory.records import StoreError
from longwatch.stream.errors import one_line

log = logging.getLogger(__name__)


class PeriodicTask:
    """Calls `tick` every `interval_s` seconds (the first time one interval after start) until
    stopped; at once again when it returns True (it has more to do now). A StoreError (Redis
    down) is logged and the next round tries again."""

    def __init__(self, name: str, interval_s: float, tick: Callable[[], object]) -> None:
        self.name = name
        self.interval_s = interval_s
        self.tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"longwatch-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Returns once a tick in progress has ended."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        wait = self.interval_s
        while not self._stop.wait(wait):
            wait = self.interval_s
            try:
                if self.tick() is True:  # more is due now: the next round without a pause
                    wait = 0.0
            except StoreError as e:
                log.warning("%s skipped this round: %s", self.name, one_line(e))

"""Crash points for the crash tests: a process that reaches a named point for the Nth time kills itself.

Inert unless LONGWATCH_CRASH_AT=<point>:<N> is in the environment of the process (bench/crash.py
and tests/test_crash.py set it in the service they start), so nothing changes otherwise. A crash
point is SIGKILL, as the kernel's OOM killer or `kill -9` would deliver it: no cleanup runs.

Points: "commit-before-exec" (a chunk's transaction queued, not sent), "commit-after-exec" (the
chunk committed, its progress not yet acknowledged).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_SPEC = os.environ.get("LONGWATCH_CRASH_AT", "")
_reached: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """Kill this process outright if it is the Nth time `name` is reached and the spec asks for it."""
    if not _SPEC:
        return
    point, _, nth = _SPEC.partition(":")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)

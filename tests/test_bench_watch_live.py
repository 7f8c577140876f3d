"""bench/watch_live.py's smoke run: watches fire on their needles and the delay is measured."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import watch_live  # noqa: E402


def test_watch_live_quick_counts_hits_false_alarms_and_delay() -> None:
    accuracy, delay = watch_live.run(quick=True)
    assert accuracy["needles"] == 2 and 0 <= accuracy["needles_with_event"] <= 2
    assert accuracy["chunk_checks"] > 0 and accuracy["false_alarms_per_watch_hour"] >= 0
    assert delay["needles"] == 1
    if delay["needles_with_event"]:
        # Checked before its chunk is full (frames 8-15 at 1 fps): sooner than the chunk's 4 s.
        assert 0 < delay["delay_p50_s"] < 4.0

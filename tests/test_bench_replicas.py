"""bench/replicas.py's smoke run: a chunk committed on replica A is cited by B's next Ask."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import replicas  # noqa: E402


def test_replicas_quick_sees_each_chunk_on_the_first_ask() -> None:
    (row,) = replicas.run(quick=True)
    assert row["chunks"] >= 2 and row["asks_on_b_to_see_it_max"] == 1
    assert 0 < row["ack_to_b_cites_p50_ms"] <= row["ack_to_b_cites_p99_ms"]

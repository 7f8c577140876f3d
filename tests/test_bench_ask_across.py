"""bench/ask_across.py's smoke run: the grid asks across streams and the latency rows grow in streams."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import ask_across  # noqa: E402


def test_ask_across_quick_finds_the_needle_stream_and_times_it() -> None:
    rows = ask_across.run(quick=True)
    grid = [r for r in rows if r["bench"] == "ask_across_grid"]
    latency = [r for r in rows if r["bench"] == "ask_across_latency"]
    assert [r["needle_stream_s"] for r in grid] == [60] and grid[0]["questions"] == 6
    assert 0 <= grid[0]["right_answer_pct"] <= grid[0]["right_stream_pct"] <= 100
    assert [r["streams"] for r in latency] == [1, 3]
    for row in latency:
        assert 0 < row["search_p50_ms"] < row["first_token_p50_ms"]
        assert row["needle_stream_first"] == "4/4"  # copies of a haystack never outrank the needle
    assert latency[1]["redis_mb"] > latency[0]["redis_mb"]

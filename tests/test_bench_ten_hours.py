"""bench/ten_hours.py's smoke run: a live stream through `longwatch serve`, asked at its checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import ten_hours  # noqa: E402


def test_ten_hours_quick_asks_at_each_checkpoint_and_drops_nothing() -> None:
    early, late = ten_hours.run(quick=True)
    assert (early["stream_h"], late["stream_h"]) == (round(64 / 3600, 2), round(240 / 3600, 2))
    assert (early["chunks"], late["chunks"]) == (8, 30)
    assert early["frames_dropped"] == late["frames_dropped"] == 0
    assert 0 < early["faiss_search_p50_ms"] < early["first_token_p50_ms"]
    assert late["service_rss_mb"] > 0 and late["redis_used_mb"] > 0
    assert late["needle_questions"] == 3 and 0 <= late["needle_right_pct"] <= 100

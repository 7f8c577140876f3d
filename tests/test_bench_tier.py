"""bench/tier.py's smoke run: the cold tier takes the chunks off Redis, and Ask still answers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import tier  # noqa: E402


def test_tier_quick_moves_the_chunks_out_of_redis() -> None:
    hot, cold = tier.run(quick=True)
    assert (hot["where"], cold["where"]) == ("all in Redis", "cold tier") and hot["chunks"] == cold[
        "chunks"
    ] == 2
    # What stays in Redis per chunk (vector, span, commit time, pointer) is a small part of a chunk.
    assert cold["redis_mb_per_stream_hour"] < hot["redis_mb_per_stream_hour"] / 20
    assert cold["disk_mb_per_stream_hour"] > 0 and cold["bytes_cold"] > 0 and hot["bytes_cold"] == 0
    assert cold["first_token_p50_ms"] > 0 and cold["first_token_cold_over_hot"] > 0

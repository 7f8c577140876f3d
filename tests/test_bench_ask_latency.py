"""bench/ask_latency.py's smoke run: real service, real gRPC; rows are consistent (no timing asserts)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import ask_latency  # noqa: E402


def test_ask_latency_quick_rows_are_sane() -> None:
    rows = ask_latency.run(quick=True)
    assert {(r["system"], r["stream_min"]) for r in rows} == {
        (s, m) for s in ("longwatch", "keep-raw-full") for m in ask_latency.QUICK_MINUTES
    }
    for row in rows:
        assert row["bench"] == "ask_latency" and "skipped" not in row
        assert row["chunks"] == -(-row["stream_min"] * 60 // 8)  # 8 frames a chunk at 1 fps
        assert 0 < row["ttft_p50_ms"] <= row["ttft_p95_ms"]
        assert row["ttft_p50_ms"] <= row["total_p50_ms"]
        if row["system"] == "keep-raw-full":
            assert row["chunks_in_context"] == row["chunks"]  # every chunk: the full context
        else:
            assert row["chunks_in_context"] == 4  # the default top-k

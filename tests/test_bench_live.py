"""bench/live_streams.py's smoke run: one real WebRTC sender over loopback, counts that add up."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import live_streams  # noqa: E402


def test_quick_run_one_stream_counts_add_up() -> None:
    (row,) = live_streams.run(quick=True)
    assert row["bench"] == "live_streams" and row["streams"] == 1
    assert row["frame"] == "1280x720@30"
    (sent,), (received,), (sampled,) = row["sent"], row["received"], row["sampled"]
    assert sent >= 30  # at least a second of video at 30 fps
    assert 0 < received <= sent
    assert 1 <= sampled <= received
    assert row["dropped"] == [0]  # one stream at 1 fps: the live queue (32 frames) never fills
    assert row["chunks"] == [1]  # a few seconds: the last, partial chunk only
    assert row["no_sample_lost"] is (sampled >= row["expected_samples"][0] - 1)
    assert row["max_streams"] == (1 if row["no_sample_lost"] else 0)
    assert row["first_failed"] == (None if row["no_sample_lost"] else 1)
    assert row["service_cores"] > 0 and row["sender_cores"] > 0


def test_live_ingest_quick_run_counts_add_up() -> None:
    import live_ingest

    rows = live_ingest.run(quick=True)
    assert [r["mode"] for r in rows] == ["grpc as fast as possible", "grpc paced", "webrtc test pattern"]
    for row in rows:
        assert row["bench"] == "live_ingest"
        assert 0 < row["received"] <= row["sent"]
        assert row["sampled"] + row["dropped"] <= row["received"]
        assert row["chunks"] >= 1
    fast = rows[0]  # a queue larger than the run: every frame through the pipeline
    assert fast["received"] == fast["sampled"] == live_ingest.QUICK.frames and fast["dropped"] == 0

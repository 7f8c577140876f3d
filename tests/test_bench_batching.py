"""bench/batching.py's smoke run: 8 ingests at once, one pass a chunk, shared vision passes, and
shared summary passes too."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import batching  # noqa: E402

from longwatch.stream import vision_batch


def test_batching_quick_shares_passes_only_when_allowed() -> None:
    before, shared, summary = batching.run(quick=True)
    assert before["chunks_per_pass"] == 1.0 and shared["chunks_per_pass"] >= 1.0
    assert before["summary_shared_chunks"] == shared["summary_shared_chunks"] == 0
    assert summary["summary_shared_chunks"] > 0 and summary["chunks_per_summary_pass"] > 1.0
    assert before["wall_s"] > 0 and shared["wall_s"] > 0 and summary["wall_s"] > 0
    assert vision_batch.MAX_BATCH_FRAMES == 64  # the bench put the service's cap back

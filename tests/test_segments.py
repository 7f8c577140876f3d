"""Segments of an archive (stream/segments.py): how a file is split, and what a worker hands back
is parsed and checked, never unpickled."""

from __future__ import annotations

import pytest

from longwatch.memory.records import CorruptData
from longwatch.stream.segments import SegmentChunk, SegmentResult, expected_chunks, plan_segments
from longwatch.stream.settings import IngestConfig


def test_segments_cover_every_chunk_once_and_the_last_runs_to_the_end() -> None:
    config = IngestConfig(fps=1.0, frames_per_chunk=8)
    assert expected_chunks(150.0, config) == 19  # 151 sampled frames
    for first, total, workers in ((0, 19, 2), (5, 19, 2), (0, 1, 4), (0, 450, 8), (18, 19, 3)):
        plan = plan_segments(first, total, workers)
        assert plan[0][0] == first and plan[-1][1] == 0  # open-ended: a longer file loses nothing
        assert all(a + n == b for (a, n), (b, _) in zip(plan, plan[1:], strict=False))
        assert len(plan) <= max(1, workers * 2)


def test_a_segments_result_round_trips_and_foreign_bytes_are_refused() -> None:
    result = SegmentResult(
        4,
        [
            SegmentChunk(4, b"chunk-four", {"frames_sampled": 8, "tokens_kept": 90}, [(32.0, b"\xff\xd8a")]),
            SegmentChunk(5, b"chunk-five", {"frames_sampled": 3, "frames_decoded": 151}, []),
        ],
        reached_end=True,
        trailing={"frames_decoded": 2},
    )
    assert SegmentResult.from_bytes(result.to_bytes()) == result
    blob = result.to_bytes()
    assert b'version\\": 1' in blob  # the one the last case changes
    for foreign in (b"", b"\x80\x04K\x01.", blob[:-4], blob.replace(b'version\\": 1', b'version\\": 9')):
        with pytest.raises(CorruptData, match="a Ray segment"):
            SegmentResult.from_bytes(foreign)

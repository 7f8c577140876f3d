"""bench/archive_ingest.py in its quick form: the real archive path end to end, figures consistent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import archive_ingest  # noqa: E402 - a script folder, put on the path just above
import common  # noqa: E402


def test_quick_run_reports_a_consistent_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "CACHE_DIR", tmp_path / "cache")
    (row,) = archive_ingest.run(quick=True)
    clip = archive_ingest.QUICK
    assert row["bench"] == "archive_ingest"
    assert row["frames_decoded"] == round(clip.seconds * clip.fps)  # every frame read, none lost
    assert row["frames_sampled"] == round(clip.seconds * row["sample_fps"])
    frames_per_chunk = 8  # the demo card's
    assert row["chunks"] == -(-row["frames_sampled"] // frames_per_chunk)
    assert row["tokens_seen"] % row["frames_sampled"] == 0
    assert 0 < row["tokens_kept"] <= row["tokens_seen"]
    assert row["bytes_stored"] > 0
    assert row["video_s"] == pytest.approx(clip.seconds, abs=0.1)
    assert row["realtime_x"] == pytest.approx(row["video_s"] / row["wall_s"], rel=0.01)
    stages = ("decode_s", "resize_s", "diffp_s", "vision_s", "compression_s", "storage_s")
    assert all(row[s] >= 0 for s in stages) and row["decode_s"] > 0 and row["vision_s"] > 0


def test_footage_is_cached_by_its_parameters(tmp_path: Path) -> None:
    tiny = archive_ingest.Footage(seconds=1.0, width=64, height=48, fps=10.0)
    path = archive_ingest.cached_footage(tiny, tmp_path)
    assert path.name == tiny.file_name and path.stat().st_size > 0
    stamp = path.stat().st_mtime_ns
    assert archive_ingest.cached_footage(tiny, tmp_path) == path and path.stat().st_mtime_ns == stamp
    assert list(tmp_path.iterdir()) == [path]  # no partial file left beside it

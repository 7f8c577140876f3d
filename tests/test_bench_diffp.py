"""bench/diffp.py's smoke run: the pruner's masks equal the native ones, and the rows add up."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import diffp as bench_diffp  # noqa: E402


def test_quick_run_masks_match_native_at_both_sizes() -> None:
    rows = bench_diffp.run(quick=True)
    assert [r["frame"] for r in rows] == ["448x252", "1280x720"]
    assert [r["grid"] for r in rows] == ["448x252", "1288x728"]
    assert [r["tokens_per_frame"] for r in rows] == [16 * 9, 46 * 26]
    for row, case in zip(rows, bench_diffp.QUICK, strict=True):
        assert row["bench"] == "diffp"
        assert row["masks_identical"] is True
        assert row["frames"] == case.frames
        assert 0 < row["kept_share"] <= 1
        for key in ("native_fps", "pruner_fps", "chunked_fps", "speedup", "chunked_speedup"):
            assert row[key] > 0
        assert row["cpus"] >= 1 and "load_avg_1m" in row

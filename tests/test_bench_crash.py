"""bench/crash.py's quick run: four crashes (two inside a chunk's commit), nothing acknowledged lost."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import crash  # noqa: E402


def test_crash_quick_resumes_to_the_clean_stream() -> None:
    (row,) = crash.run(quick=True)
    assert row["crash_points"] == 4 and row["of_which_inside_a_commit"] == 2
    assert row["identical_to_clean_run"] is True
    assert row["final_chunks"] == row["chunks_in_stream"] > row["acknowledged_before_the_last_crash"] > 0
    assert row["stored_chunks_checked_against_clean"] > 0
    assert row["resumes"] == 4

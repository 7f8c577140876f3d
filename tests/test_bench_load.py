"""bench/load.py's and bench/soak.py's quick runs: Asks beside live streams and an ingest, no error."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import load  # noqa: E402
import soak  # noqa: E402


def test_load_quick_answers_every_ask_beside_live_streams_and_an_archive() -> None:
    alone, beside = load.run(quick=True)
    for row in (alone, beside):
        assert row["asks"] > 0
        assert row["errors"] == 0, row["first_error"]
        assert 0 < row["first_token_p50_ms"] <= row["first_token_p99_ms"]
    assert beside["live_streams"] == 3 and all(n > 0 for n in beside["live_sampled"])
    assert beside["archive_chunks"] > 0 and beside["archive_error"] is None
    assert beside["service_tracebacks"] == 0


def test_soak_quick_samples_and_asks() -> None:
    (row,) = soak.run(quick=True)
    assert row["samples"] >= 5
    assert row["asks"] > 0 and row["ask_errors"] == 0, row["first_error"]
    assert row["chunks"] > 0 and row["service_tracebacks"] == 0


def test_slope_per_hour() -> None:
    assert soak.slope_per_hour([0, 1800, 3600], [10, 15, 20]) == 10
    assert soak.slope_per_hour([0, 10], [5, 5]) == 0

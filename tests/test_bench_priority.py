"""bench/priority.py's smoke run: Asks answer beside 8 archive ingests under either lock."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import priority  # noqa: E402


def test_priority_quick_answers_beside_eight_ingests() -> None:
    plain, ordered, shared = priority.run(quick=True)
    assert (plain["lock"], ordered["lock"]) == ("plain lock (before)", "by priority")
    assert shared["lock"] == "by priority, summary passes shared"
    for row in (plain, ordered, shared):
        assert row["asks"] > 0 and 0 < row["first_token_p50_ms"] <= row["first_token_p99_ms"]
        assert row["ingest_chunks_per_s"] > 0  # the ingests went on meanwhile

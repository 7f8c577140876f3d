"""bench/fuzz.py's quick run: about 1,000 generated bad inputs against a running service, no failure."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fuzz  # noqa: E402


def test_fuzz_quick_finds_nothing() -> None:
    (row,) = fuzz.run(quick=True)
    assert row["inputs"] >= 1000
    for family in ("rpc", "bytes", "video", "frames", "http", "planted"):
        statuses = row["statuses"][family]
        assert sum(statuses.values()) == row[f"inputs_{family}"] > 0
        assert "INTERNAL" not in statuses and "UNKNOWN" not in statuses, (family, statuses)
    # every family got past validation sometimes: the fuzzing reaches the code behind it
    assert all(row["statuses"][k].get("OK", 0) > 0 for k in ("rpc", "video", "frames", "planted"))
    assert row["statuses"]["planted"].get("DATA_LOSS", 0) > 0
    assert row["failures"] == 0

"""bench/ray_ingest.py's smoke run: one process and 1 and 2 Ray workers make the same stream."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'longwatch[ray]'")

import ray_ingest  # noqa: E402


def test_ray_ingest_quick_makes_the_same_stream_each_way() -> None:
    rows = ray_ingest.run(quick=True)  # raises if a stream differs from the one-process one
    assert [r["workers"] for r in rows] == ["one process", 1, 2]
    assert len({r["chunks"] for r in rows}) == 1 and all(r["wall_s"] > 0 for r in rows)

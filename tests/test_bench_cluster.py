"""bench/cluster.py's smoke run: commits on one Redis and on a local cluster, with and without WAIT."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import cluster  # noqa: E402


def test_cluster_quick_times_commits_on_each_redis() -> None:
    rows = cluster.run(quick=True)
    assert [(r["redis"], r["commit_replicas"]) for r in rows] == [
        ("standalone", 0),
        ("cluster 3+3", 0),
        ("cluster 3+3", 1),
    ]
    for row in rows:
        assert row["commits"] == 10 and 1.5 < row["mb_per_commit"] < 1.8  # the 7B shape as stored
        assert 0 < row["commit_p50_ms"] <= row["commit_p99_ms"]

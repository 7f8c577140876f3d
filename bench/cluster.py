"""What a chunk commit costs on a Redis Cluster, and what waiting for a replica adds to it.

    python bench/cluster.py            # 200 commits a row
    python bench/cluster.py --quick    # 10 commits a row

A real local cluster (3 masters, 3 replicas, loopback; tests/redis_cluster.py) and, beside it, one
standalone redis-server (the embedded default's binary). Each row commits chunks of the 7B shape
as stored (28 layers, 4 KV heads, head_dim 128, 56 summary tokens kept, int8 K/V: about 1.6 MB a
blob) through the store, one after another, and times each commit: standalone; cluster; cluster
with --commit-replicas 1 (Redis WAIT for one replica before the commit returns).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import bench_main, machine, percentile  # noqa: E402
from conftest import build_chunk  # noqa: E402
from redis_cluster import LocalRedisCluster  # noqa: E402

from longwatch.memory.redis_server import EmbeddedRedis  # noqa: E402
from longwatch.memory.store import open_store  # noqa: E402
from longwatch.proto.streams import StreamRecord  # noqa: E402

SHAPE = {"layers": 28, "kv_heads": 4, "head_dim": 128, "n_kept": 56, "retrieval_dim": 3584}


def commit_times(url: str, commits: int, commit_replicas: int, stream_id: str) -> dict:
    store = open_store(url, kv_storage="int8", commit_replicas=commit_replicas)
    try:
        store.create_stream(StreamRecord(stream_id=stream_id))
        chunks = [build_chunk(stream_id, i, **SHAPE) for i in range(commits)]
        times, written = [], 0
        for chunk in chunks:
            start = time.perf_counter()
            written += store.commit_chunk(chunk)
            times.append((time.perf_counter() - start) * 1000)
        store.delete_stream(stream_id)
    finally:
        store.close()
    return {
        "commits": commits,
        "mb_per_commit": round(written / commits / 1e6, 2),
        "commit_p50_ms": round(statistics.median(times), 1),
        "commit_p99_ms": round(percentile(times, 99), 1),
        "commits_per_s": round(commits / (sum(times) / 1000), 1),
    }


def run(quick: bool = False) -> list[dict]:
    commits = 10 if quick else 200
    rows = []
    with tempfile.TemporaryDirectory(prefix="lw-cluster-") as tmp:
        with EmbeddedRedis(Path(tmp) / "standalone") as one:
            rows.append(
                {"redis": "standalone", "commit_replicas": 0} | commit_times(one.url, commits, 0, "cam")
            )
        with LocalRedisCluster(Path(tmp) / "cluster") as cluster:
            for replicas in (0, 1):
                figures = commit_times(cluster.url, commits, replicas, f"cam-{replicas}")
                rows.append({"redis": "cluster 3+3", "commit_replicas": replicas} | figures)
    load = machine()["load_avg_1m"]
    return [{"bench": "cluster"} | row | {"load_avg_1m": load} for row in rows]


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()

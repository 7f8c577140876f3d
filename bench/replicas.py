"""How soon a chunk committed on one replica is seen by an Ask on another.

    python bench/replicas.py            # a live stream of 60 chunks fed through replica A
    python bench/replicas.py --quick    # 6 chunks

Two `LongWatchServer` replicas (the demo model) on one embedded redis-server. A live stream is fed
over gRPC IngestFrames through A at 1 fps sampling; each time A acknowledges a chunk, B is asked
(over every chunk) until it cites that chunk. Reported: how many Asks on B that took (1: the
first Ask after the acknowledgement), the time from the acknowledgement to B's answer citing
it, and B's Ask time when its index had to follow a commit against one when nothing changed.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import bench_main, machine, percentile  # noqa: E402
from service_settings import loopback_settings  # noqa: E402

from longwatch.clients.client import LiveFrame, LongWatchClient  # noqa: E402
from longwatch.memory.redis_server import EmbeddedRedis  # noqa: E402
from longwatch.model.train.synthetic import SyntheticFootage  # noqa: E402
from longwatch.stream.server import LongWatchServer  # noqa: E402


def run(quick: bool = False) -> list[dict]:
    chunks = 6 if quick else 60
    footage = SyntheticFootage(seed=5, width=320, height=180, fps=4.0)

    def frames() -> Iterator[LiveFrame]:
        for i in range(chunks * 8 * 4):  # 8 sampled frames a chunk at 1 fps of a 4 fps feed
            yield LiveFrame(i / 4.0, rgb=footage.frame_at(i))

    asks_needed, seen_ms, following_ms, steady_ms = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="lw-replicas-") as tmp:
        root = Path(tmp)
        with (
            EmbeddedRedis(root / "redis") as redis_server,
            LongWatchServer(loopback_settings(root / "a", redis_server.url)) as a,
            LongWatchServer(loopback_settings(root / "b", redis_server.url)) as b,
            LongWatchClient(f"127.0.0.1:{a.port}", timeout=120) as on_a,
            LongWatchClient(f"127.0.0.1:{b.port}", timeout=120) as on_b,
        ):
            for progress in on_a.ingest_frames("door", frames(), fps=1.0):
                if not progress.chunks_committed or progress.done:
                    continue
                acked = time.perf_counter()
                newest = progress.chunks_committed - 1
                for n in range(1, 100):
                    t = time.perf_counter()
                    result = on_b.ask("door", "What appeared?", top_k=0)
                    if n == 1:
                        following_ms.append((time.perf_counter() - t) * 1000)
                    if newest in {e.chunk_index for e in result.evidence}:
                        asks_needed.append(n)
                        seen_ms.append((time.perf_counter() - acked) * 1000)
                        break
                t = time.perf_counter()
                on_b.ask("door", "What appeared?", top_k=0)  # nothing changed since: no sync
                steady_ms.append((time.perf_counter() - t) * 1000)
    return [
        {
            "bench": "replicas",
            "chunks": len(seen_ms),
            "asks_on_b_to_see_it_max": max(asks_needed),
            "ack_to_b_cites_p50_ms": round(statistics.median(seen_ms), 1),
            "ack_to_b_cites_p99_ms": round(percentile(seen_ms, 99), 1),
            "b_ask_following_p50_ms": round(statistics.median(following_ms), 1),
            "b_ask_unchanged_p50_ms": round(statistics.median(steady_ms), 1),
            "load_avg_1m": machine()["load_avg_1m"],
        }
    ]


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()

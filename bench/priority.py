"""Ask beside 8 archive ingests: the model lock granted by priority against a plain lock.

    python bench/priority.py            # 40 s a side
    python bench/priority.py --quick    # 6 s a side

A `LongWatchServer` (the demo model, its embedded Redis) ingests 8 archives at once over gRPC, each
a 10-minute 320x180 video again and again, while one client asks about a ready stream, one
question after another. Two runs, the same server: the model's lock as the service has it
(stream/model_lock.py: an answer's next step goes before an ingest's next chunk), and a plain
lock in its place (what the service had before: any waiter may win), then by priority with the
ingests' summary passes shared (`--share-summary-passes`: a shared pass holds the model longer).
Reported: Ask's time to
first token and total time (p50, p99), and the chunks the ingests committed meanwhile.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import bench_main, cached_file, machine, percentile  # noqa: E402
from service_settings import loopback_settings  # noqa: E402

from longwatch.clients.client import LongWatchClient  # noqa: E402
from longwatch.memory.redis_server import EmbeddedRedis  # noqa: E402
from longwatch.model.train.synthetic import write_video  # noqa: E402
from longwatch.stream.model_lock import ModelLock  # noqa: E402
from longwatch.stream.server import LongWatchServer  # noqa: E402

INGESTS = 8


class PlainLock:
    """The lock the service had before: one holder, any waiter may win (the baseline)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, priority: int) -> Iterator[None]:
        with self._lock:
            yield

    def asks_waiting(self) -> bool:
        return False  # it cannot tell


def one_side(server: LongWatchServer, video: Path, seconds: float, side: str) -> dict:
    stop = threading.Event()
    chunks = [0] * INGESTS

    def ingest(n: int) -> None:
        with LongWatchClient(f"127.0.0.1:{server.port}", timeout=600) as client:
            round_ = 0
            while not stop.is_set():
                stream_id = f"{''.join(w[0] for w in side.split() if w[0].isalpha())}-{n}-{round_}"
                for progress in client.ingest_file(stream_id, path=video):
                    chunks[n] = chunks[n] + 1 if not progress.done else chunks[n]
                    if stop.is_set():
                        break
                else:  # only a finished one: a stream deleted under its running ingest would let
                    client.delete_stream(stream_id)  # that ingest go on unseen by the wait below
                round_ += 1

    failed: list[BaseException] = []

    def ingest_or_note(n: int) -> None:
        try:
            ingest(n)
        except BaseException as e:  # noqa: BLE001 - a figure without its ingests is no figure
            failed.append(e)
            stop.set()

    threads = [threading.Thread(target=ingest_or_note, args=(n,)) for n in range(INGESTS)]
    for t in threads:
        t.start()
    first, total = [], []
    time.sleep(2.0)  # the ingests under way
    before = sum(chunks)
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=600) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = client.ask("ready", "What appeared?", top_k=4)
            first.append(result.timings["first_token_ms"])
            total.append(result.timings["total_ms"])
    committed = sum(chunks) - before
    stop.set()
    for t in threads:
        t.join()
    if failed:
        raise RuntimeError(f"an ingest beside the Asks failed: {failed[0]}")
    return {
        "bench": "priority",
        "lock": side,
        "ingests": INGESTS,
        "asks": len(first),
        "first_token_p50_ms": round(statistics.median(first), 1),
        "first_token_p99_ms": round(percentile(first, 99), 1),
        "total_p50_ms": round(statistics.median(total), 1),
        "total_p99_ms": round(percentile(total, 99), 1),
        "ingest_chunks_per_s": round(committed / seconds, 1),
        "load_avg_1m": machine()["load_avg_1m"],
    }


def run(quick: bool = False) -> list[dict]:
    seconds = 6.0 if quick else 40.0
    video = cached_file("priority-600s-320x180-4fps.mp4", lambda p: write_video(p, 600, 4, 320, 180, seed=11))
    rows = []
    with tempfile.TemporaryDirectory(prefix="lw-priority-") as tmp:
        root = Path(tmp)
        with EmbeddedRedis(root / "redis") as redis_server:
            settings = loopback_settings(root / "state", redis_server.url, workers=16)
            with LongWatchServer(settings) as server, LongWatchClient(f"127.0.0.1:{server.port}") as client:
                list(client.ingest_file("ready", path=video))
                assert server.service is not None
                sides = (
                    ("plain lock (before)", PlainLock(), False),
                    ("by priority", ModelLock(), False),
                    ("by priority, summary passes shared", ModelLock(), True),
                )
                for side, lock, share_summary in sides:
                    # Swapped only once the last side's ingests ended on the server too (a cancelled
                    # call's ingest stops at its next frame): two locks at once would let two passes
                    # run on the model together.
                    while any(s.state == "ingesting" for s in client.list_streams()):
                        time.sleep(0.1)
                    server.service.runner.lock = lock  # type: ignore[assignment]
                    server.service.runner.vision.share_summary = share_summary
                    rows.append(one_side(server, video, seconds, side))
    return rows


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()

"""Ask across streams: the right stream and answer on a cross-stream needle grid, and first-token
latency against the number of streams.

    python bench/ask_across.py            # the grid (holdout split) and 1 / 10 / 100 hour-long streams
    python bench/ask_across.py --quick    # a smoke run: a 2-cell grid, 1 / 3 streams of 2 minutes

The real service in a temporary folder (embedded redis-server, gRPC on 127.0.0.1), the demo model
as served (its card's frame size, tokens, margin; int8 K/V).

Grid: a pool of nine haystack streams (three each of 1, 5 and 30 minutes; footage without a
needle) and, per cell, one needle stream of the cell's length with its needle at the cell's depth
(the demo model's needles, `longwatch eval needle`'s videos, holdout seeds: no choice was made on
them). Each of the three needle questions goes to AskAcross over all ten streams (results 3, the
served top-k and margin); "right stream" is the needle's stream ranked first, "right answer" also
its answer exactly the expected one; beside them, Ask on the needle stream alone (what the
model reads there whatever the other streams). The needle stream is deleted before the next cell.

Latency: one hour of haystack and one hour with a needle are ingested through the service; the
other streams are copies of the haystack hour's chunks, committed under their own ids through the
store (what an ingest commits; ingesting 99 more hours would take this machine most of an hour
and measure nothing more). AskAcross over all streams, the needle question, 20 times: first token
as the service times it (question vector, version reads, every search, one stream's load and
prefill), and the search part alone; "cold" is the first question after a restart, when every
stream's index is read from Redis.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_main, machine, percentile  # noqa: E402

from longwatch.clients.client import LongWatchClient  # noqa: E402
from longwatch.memory.store import ChunkStore, open_store  # noqa: E402
from longwatch.model.train.needles import make_needle_video, questions_for, seed_for  # noqa: E402
from longwatch.model.train.synthetic import SyntheticFootage  # noqa: E402
from longwatch.proto.streams import StreamState  # noqa: E402
from longwatch.stream.server import LongWatchServer  # noqa: E402
from longwatch.stream.settings import IngestConfig, LiveConfig, ServiceSettings  # noqa: E402

POOL_SECONDS = (60, 60, 60, 300, 300, 300, 1800, 1800, 1800)
GRID_SECONDS = (60, 300, 1800)
GRID_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
STREAM_COUNTS = (1, 10, 100)
ASKS = 20


def settings(state_dir: Path) -> ServiceSettings:
    return ServiceSettings(
        port=0,
        http_port=0,
        state_dir=state_dir,
        ingest=IngestConfig(fps=1.0, frames_per_chunk=8, max_tokens_per_frame=4),  # the demo model's
        live=LiveConfig(ice_addresses=("127.0.0.1",)),
    )


def haystack(folder: Path, seed: int, seconds: int) -> Path:
    path = folder / f"hay-{seed}-{seconds}s.mp4"
    return SyntheticFootage(seed, 56, 56, 1.0).write(path, seconds, faststart=True)


def grid(tmp: Path, quick: bool) -> list[dict]:
    pool = POOL_SECONDS[:2] if quick else POOL_SECONDS
    lengths, depths = ((60,), (0.0, 1.0)) if quick else (GRID_SECONDS, GRID_DEPTHS)
    rows = []
    with LongWatchServer(settings(tmp / "grid")) as server, connect(server) as client:
        for k, seconds in enumerate(pool):
            path = haystack(tmp, seed_for("holdout", 7000 + k), seconds)
            list(client.ingest_file(f"hay{k}", path=path))
        cell = 0
        for seconds in lengths:
            counts = {"stream": 0, "answer": 0, "alone": 0, "asked": 0}
            first_token: list[float] = []
            for depth in depths:
                video = make_needle_video(seed_for("holdout", 7100 + cell), seconds, depth)
                cell += 1
                list(client.ingest_file("needle", path=video.write(tmp / video.file_name)))
                for qa in questions_for(video.needle).values():
                    result = client.ask_across(qa.question, results=3, max_new_tokens=8)
                    best = result.results[0]
                    counts["asked"] += 1
                    counts["stream"] += best.stream_id == "needle"
                    counts["answer"] += best.stream_id == "needle" and best.result.answer == qa.answer
                    first_token.append(result.timings["first_token_ms"])
                    alone = client.ask("needle", qa.question, max_new_tokens=8)  # Ask on it alone
                    counts["alone"] += alone.answer == qa.answer
                client.delete_stream("needle")
            rows.append(
                {
                    "bench": "ask_across_grid",
                    "split": "holdout",
                    "streams": len(pool) + 1,
                    "needle_stream_s": seconds,
                    "depths": len(depths),
                    "questions": counts["asked"],
                    "right_stream_pct": round(100 * counts["stream"] / counts["asked"], 1),
                    "right_answer_pct": round(100 * counts["answer"] / counts["asked"], 1),
                    "ask_alone_right_pct": round(100 * counts["alone"] / counts["asked"], 1),
                    "first_token_p50_ms": round(statistics.median(first_token), 1),
                }
            )
    return rows


def copy_stream(store: ChunkStore, source: str, copy: str) -> None:
    """The source stream's chunks committed under another id, as its ingest committed them."""
    record = store.get_stream(source)
    assert record is not None
    now = time.time()
    store.create_stream(
        dataclasses.replace(
            record,
            stream_id=copy,
            state=StreamState.INGESTING,
            created_unix=now,
            updated_unix=now,
            chunks=0,
            bytes_stored=0,
        )
    )
    for start in range(0, record.chunks, 64):
        for chunk in store.get_chunks(source, range(start, min(start + 64, record.chunks))):
            store.commit_chunk(dataclasses.replace(chunk, stream_id=copy))
    store.set_state(copy, StreamState.READY)


def latency(tmp: Path, quick: bool) -> list[dict]:
    seconds = 120 if quick else 3600
    counts = (1, 3) if quick else STREAM_COUNTS
    asks = 3 if quick else ASKS
    video = make_needle_video(seed_for("holdout", 7200), seconds, 0.5)
    question = questions_for(video.needle)["what"].question
    state = tmp / "latency"
    rows = []
    with LongWatchServer(settings(state)) as server, connect(server) as client:
        list(client.ingest_file("needle", path=video.write(tmp / video.file_name)))
        list(client.ingest_file("hay", path=haystack(tmp, seed_for("holdout", 7201), seconds)))
        redis_url = server.redis_url
        bytes_per_stream = client.get_stream("hay").bytes_stored
    made = 1  # the needle stream; copies of the haystack follow
    for n in counts:
        with LongWatchServer(settings(state)) as server, connect(server) as client:
            store = open_store(redis_url)
            t0 = time.perf_counter()
            while made < n:
                copy_stream(store, "hay", f"copy{made}")
                made += 1
            copy_s = time.perf_counter() - t0
            store.close()
            streams = ["needle"] + [f"copy{k}" for k in range(1, n)]
            cold = client.ask_across(question, streams, results=1, max_new_tokens=8)
            warm = [client.ask_across(question, streams, results=1, max_new_tokens=8) for _ in range(asks)]
            alone = [client.ask("needle", question, max_new_tokens=8) for _ in range(asks)]
            right = sum(r.results[0].stream_id == "needle" for r in [cold, *warm])
            first = [r.timings["first_token_ms"] for r in warm]
            search = [r.timings["search_ms"] for r in warm]
            rows.append(
                {
                    "bench": "ask_across_latency",
                    "streams": n,
                    "hours_each": seconds / 3600,
                    "first_token_p50_ms": round(statistics.median(first), 1),
                    "first_token_p90_ms": round(percentile(first, 90), 1),
                    "search_p50_ms": round(statistics.median(search), 2),
                    "first_token_cold_ms": round(cold.timings["first_token_ms"], 1),
                    "ask_one_stream_first_token_p50_ms": round(
                        statistics.median(r.timings["first_token_ms"] for r in alone), 1
                    ),
                    "needle_stream_first": f"{right}/{asks + 1}",
                    "redis_mb": round(n * bytes_per_stream / 1e6, 1),
                    "copies_made_s": round(copy_s, 1),
                    "load_avg_1m": machine()["load_avg_1m"],
                }
            )
    return rows


def connect(server: LongWatchServer) -> LongWatchClient:
    client = LongWatchClient(f"127.0.0.1:{server.port}", timeout=1200)
    client.wait_ready(timeout=30)
    return client


def run(quick: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="lw-across-") as tmp_name:
        tmp = Path(tmp_name)
        return grid(tmp, quick) + latency(tmp, quick)


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()

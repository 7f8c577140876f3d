"""8 archives ingested at once: vision (and summary) passes shared across streams, or one a chunk.

    python bench/batching.py            # 8 x a 10-minute 320x180 video
    python bench/batching.py --quick    # 8 x 2 minutes

A `LongWatchServer` (the demo model, its embedded Redis) ingests the same video into 8 streams at
once over gRPC, three times: with one pass per chunk (the cap set to one chunk's 8 frames: what
the service did before), with the vision tower's passes shared by the chunks waiting together
(stream/vision_batch.py: up to 64 frames a pass; the default), and with their summary passes
shared too (`--share-summary-passes`: one padded batch). Reported: the wall time for all 8, chunks per
second, chunks per vision pass, and what that rate means for live cameras: a camera sampled at
1 fps makes a chunk every 8 s, so the model keeps up with chunks/s x 8 of them (the model's
share only: decoding and the network come on top).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import bench_main, cached_file, machine  # noqa: E402
from service_settings import loopback_settings  # noqa: E402

from longwatch.clients.client import LongWatchClient  # noqa: E402
from longwatch.memory.redis_server import EmbeddedRedis  # noqa: E402
from longwatch.model.train.synthetic import write_video  # noqa: E402
from longwatch.stream import vision_batch  # noqa: E402
from longwatch.stream.server import LongWatchServer  # noqa: E402

STREAMS = 8
SECONDS_PER_CHUNK = 8  # at 1 fps, 8 frames a chunk


def run(quick: bool = False) -> list[dict]:
    seconds = 120 if quick else 600
    video = cached_file(
        f"batching-{seconds}s-320x180-4fps.mp4", lambda p: write_video(p, seconds, 4, 320, 180, seed=12)
    )
    rows = []
    shared_cap = vision_batch.MAX_BATCH_FRAMES
    with tempfile.TemporaryDirectory(prefix="lw-batching-") as tmp:
        root = Path(tmp)
        with EmbeddedRedis(root / "redis") as redis_server:
            settings = loopback_settings(root / "state", redis_server.url, workers=16)
            with LongWatchServer(settings) as server:
                assert server.service is not None
                vision = server.service.runner.vision
                for side, cap, summary in (
                    ("one pass per chunk (before)", 8, False),
                    ("shared vision passes", shared_cap, False),
                    ("shared vision and summary passes", shared_cap, True),
                ):
                    vision_batch.MAX_BATCH_FRAMES = cap
                    vision.share_summary = summary
                    passes, chunks = vision.passes, vision.chunks
                    summary_passes, summary_chunks = vision.summary_passes, vision.summary_chunks
                    wall = ingest_all(server.port, video, side.split()[0] + str(summary))
                    passes, chunks = vision.passes - passes, vision.chunks - chunks
                    summary_passes = vision.summary_passes - summary_passes
                    summary_chunks = vision.summary_chunks - summary_chunks
                    rows.append(
                        {
                            "bench": "batching",
                            "vision": side,
                            "streams": STREAMS,
                            "video_s": seconds,
                            "wall_s": round(wall, 1),
                            "chunks_per_s": round(chunks / wall, 1),
                            "chunks_per_pass": round(chunks / passes, 2),
                            # chunks whose summary pass was shared, and how many shared one
                            "summary_shared_chunks": summary_chunks,
                            "chunks_per_summary_pass": round(summary_chunks / max(1, summary_passes), 2),
                            "cameras_at_1fps_model_keeps_up_with": int(chunks / wall * SECONDS_PER_CHUNK),
                            "load_avg_1m": machine()["load_avg_1m"],
                        }
                    )
    vision_batch.MAX_BATCH_FRAMES = shared_cap  # the server is gone; the module's cap goes back
    return rows


def ingest_all(port: int, video: Path, prefix: str) -> float:
    errors: list[BaseException] = []

    def ingest(n: int) -> None:
        try:
            with LongWatchClient(f"127.0.0.1:{port}", timeout=600) as client:
                list(client.ingest_file(f"{prefix}-{n}", path=video))
        except BaseException as e:  # noqa: BLE001 - a figure without every ingest is no figure
            errors.append(e)

    threads = [threading.Thread(target=ingest, args=(n,)) for n in range(STREAMS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"an ingest failed: {errors[0]}")
    return time.perf_counter() - started


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()

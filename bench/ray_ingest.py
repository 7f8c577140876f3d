"""An hour's archive ingested in one process against over 1 and 2 local Ray workers.

    python bench/ray_ingest.py            # the hour of 640x360 30 fps footage of bench/archive_ingest.py
    python bench/ray_ingest.py --quick    # 20 s of it

A `LongWatchServer` (the demo model, its embedded Redis) with `--ray local --ray-workers N`: the
archive goes in over gRPC once without Ray, then with `ray=True`, each after a short warm-up
ingest (which also starts the Ray actors: reported apart, as `actors_start_s`). Every stream is
checked against the one-process stream: the same chunks, counters and bytes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from archive_ingest import FULL, QUICK, cached_footage  # noqa: E402
from common import bench_main, machine  # noqa: E402
from service_settings import loopback_settings  # noqa: E402

from longwatch.clients.client import LongWatchClient  # noqa: E402
from longwatch.memory.redis_server import EmbeddedRedis  # noqa: E402
from longwatch.stream.server import LongWatchServer  # noqa: E402
from longwatch.stream.settings import IngestConfig  # noqa: E402

COMPARED = ("chunks", "frames_decoded", "frames_sampled", "tokens_seen", "tokens_kept", "bytes_stored")


def timed_ingest(client: LongWatchClient, stream_id: str, video: Path, ray: bool) -> float:
    started = time.perf_counter()
    last = list(client.ingest_file(stream_id, path=video, ray=ray))[-1]
    if not last.done:
        raise RuntimeError(f"ingest of {stream_id} ended without its final progress")
    return time.perf_counter() - started


def run(quick: bool = False) -> list[dict]:
    footage = QUICK if quick else FULL
    video, warmup = cached_footage(footage), cached_footage(QUICK)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lw-bench-ray-") as tmp:
        root = Path(tmp)
        with EmbeddedRedis(root / "redis") as redis_server:
            reference = None
            for workers in (0, 1, 2):
                settings = loopback_settings(
                    root / f"state-{workers}",
                    redis_server.url,
                    ray_address="local" if workers else None,
                    ray_workers=max(1, workers),
                    ingest=IngestConfig(),
                    ingest_explicit=frozenset(),  # the model card's ingest settings, as `serve`
                )
                with (
                    LongWatchServer(settings) as server,
                    LongWatchClient(f"127.0.0.1:{server.port}", timeout=600) as client,
                ):
                    actors_s = timed_ingest(client, f"warmup-{workers}", warmup, ray=bool(workers))
                    wall = timed_ingest(client, f"archive-{workers}", video, ray=bool(workers))
                    stream = client.get_stream(f"archive-{workers}")
                figures = [getattr(stream, f) for f in COMPARED]
                reference = reference or figures
                if figures != reference:
                    raise RuntimeError(
                        f"over {workers} Ray workers the stream differs: {figures} != {reference}"
                    )
                rows.append(
                    {
                        "bench": "ray_ingest",
                        "video": f"{footage.width}x{footage.height} {footage.fps:g} fps {footage.seconds:g} s",
                        "workers": workers or "one process",
                        "wall_s": round(wall, 1),
                        "realtime_x": round(stream.duration_s / wall, 1),
                        "chunks": stream.chunks,
                        "actors_start_s": round(actors_s, 1) if workers else 0.0,
                        "load_avg_1m": machine()["load_avg_1m"],
                    }
                )
    return rows


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()

"""The cold tier: Redis memory and disk per stream-hour with and without it, and Ask over cold chunks.

    python bench/tier.py            # 2 min of 640x360 footage (15 chunks), 7B shape, 30 Asks a side
    python bench/tier.py --quick    # 16 s (2 chunks), 5 Asks a side

The 7B-shaped decoder of bench/storage.py (VideoLLaMA3-7B's 28 layers, 4 KV heads, head_dim 128,
bf16, 120 tokens a frame, summary tokens at alpha 16, int8 K/V as served) ingests footage into the
real service, its embedded Redis and a cold tier under the state folder. Redis' own MEMORY USAGE
of every key of the stream is read with every chunk in Redis ("hot"), then after the sweeper moved
them all to the cold tier ("cold": the record, spans, retrieval vectors, commit times and cold
pointers stay in Redis). Per stream-hour = the full chunks' mean x 450 chunks an hour (1 fps, 8
frames a chunk) + the record; the pictures kept to show evidence (one 240-px JPEG a chunk, which
go cold with their chunk; their times stay) are counted in it and also reported apart. Ask: the same questions over gRPC, top-4, timed
by the service (first token, and the load of the chunks' caches); cold reads come from the page
cache after the first (the machine's RAM holds the files), as they would on a serving machine
with free memory.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_main, machine, percentile  # noqa: E402
from storage import (  # noqa: E402
    CHUNKS_PER_HOUR,
    FPS,
    FRAMES_PER_CHUNK,
    SHRUNK,
    TOKENS_PER_FRAME,
    add_arguments,
    build_shape,
)

from longwatch.clients.client import LongWatchClient  # noqa: E402
from longwatch.memory.store import StreamKeys  # noqa: E402
from longwatch.model.config import ModelConfig  # noqa: E402
from longwatch.model.train.synthetic import write_video  # noqa: E402
from longwatch.stream.server import LongWatchServer  # noqa: E402
from longwatch.stream.settings import IngestConfig, ServiceSettings  # noqa: E402

STREAM = "cam"
QUESTIONS = ("What appeared?", "When did it appear?", "What colour was it?", "What is on the left?")


def redis_bytes(client: redis.Redis, chunks: int) -> dict:
    """MEMORY USAGE of the stream's keys: the record, the rest, and the rest per chunk; and the
    bytes of the pictures still in Redis (one JPEG a chunk, 240 px: the default)."""
    keys = StreamKeys(STREAM)
    names = [
        keys.vectors,
        keys.spans,
        keys.committed,
        keys.cold,
        keys.pictures,
        keys.picture_times,
        keys.cold_pictures,
        *(keys.chunk(i) for i in range(chunks)),
    ]
    rest = sum(client.memory_usage(name, samples=0) or 0 for name in names)
    record = client.memory_usage(keys.record, samples=0) or 0
    pictures = sum(len(v) for v in client.hvals(keys.pictures))
    return {"record": record, "per_chunk": rest / chunks, "pictures_per_chunk": pictures / chunks}


def ask_times(client: LongWatchClient, n: int) -> dict:
    first, load = [], []
    for i in range(n):
        result = client.ask(STREAM, QUESTIONS[i % len(QUESTIONS)], top_k=4)
        first.append(result.timings["first_token_ms"])
        load.append(result.timings["load_ms"])
    return {
        "first_token_p50_ms": round(statistics.median(first), 1),
        "first_token_p95_ms": round(percentile(first, 95), 1),
        "load_p50_ms": round(statistics.median(load), 1),
    }


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    seconds, asks = (16, 5) if quick else (120, 30)
    with tempfile.TemporaryDirectory(prefix="lw-tier-") as tmp_name:
        tmp = Path(tmp_name)
        video = write_video(tmp / "footage.mp4", seconds, 5, 640, 360, seed=3)
        settings = ServiceSettings(
            port=0,
            http_port=0,
            state_dir=tmp / "state",
            retention_interval_s=3600,  # swept here by hand, once the hot figures are read
            hot_window_s=0.001,
            ingest=IngestConfig(
                fps=FPS, frames_per_chunk=FRAMES_PER_CHUNK, max_tokens_per_frame=TOKENS_PER_FRAME
            ),
            model=ModelConfig(
                path=build_shape(tmp / "7b", "7b", SHRUNK["a"]), device=device, dtype="bfloat16"
            ),
        )
        with (
            LongWatchServer(settings) as server,
            LongWatchClient(f"127.0.0.1:{server.port}", timeout=600) as client,
        ):
            raw = redis.Redis.from_url(server.redis_url)
            stream = list(client.ingest_file(STREAM, path=video))[-1].stream
            chunks = int(stream.chunks)
            hot = redis_bytes(raw, chunks) | ask_times(client, asks)
            assert server.sweeper is not None
            server.sweeper.sweep()
            cold_stream = client.get_stream(STREAM)
            cold = redis_bytes(raw, chunks) | ask_times(client, asks)
            disk = sum(p.stat().st_size for p in (tmp / "state" / "cold" / f"stream-{STREAM}").iterdir())
            raw.close()
    rows = []
    for tier, figures, disk_bytes in (("all in Redis", hot, 0), ("cold tier", cold, disk)):
        per_hour = figures["per_chunk"] * CHUNKS_PER_HOUR + figures["record"]
        rows.append(
            {
                "bench": "tier",
                "model": "7b shape, summary tokens, int8",
                "where": tier,
                "chunks": chunks,
                "redis_mb_per_stream_hour": round(per_hour / 1e6, 2),
                "disk_mb_per_stream_hour": round(disk_bytes / chunks * CHUNKS_PER_HOUR / 1e6, 1),
                "pictures_mb_per_stream_hour": round(
                    figures["pictures_per_chunk"] * CHUNKS_PER_HOUR / 1e6, 2
                ),
                "bytes_cold": int(cold_stream.bytes_cold) if disk_bytes else 0,
                **{k: v for k, v in figures.items() if k.endswith("_ms")},
                "asks": asks,
                "load_avg_1m": machine()["load_avg_1m"],
            }
        )
    rows[1]["first_token_cold_over_hot"] = round(cold["first_token_p50_ms"] / hot["first_token_p50_ms"], 2)
    return rows


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0], add_arguments)


if __name__ == "__main__":
    main()

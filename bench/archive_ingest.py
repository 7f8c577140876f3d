"""Archive ingest: how many times faster than real time an hour of video goes into memory.

    python bench/archive_ingest.py            # one hour of 640x360 30 fps footage at 1 fps
    python bench/archive_ingest.py --quick    # a 20 s clip (the test's smoke run)

The footage is `SyntheticFootage` (still scenes with sensor noise, pans, cuts) encoded once with
PyAV's H.264 encoder (libx264 veryfast, B-frames) and cached under ~/.cache/longwatch-bench/,
keyed by its parameters: an hour takes about 20 minutes to render and encode on 2 busy cores.
It goes through the service's real archive path, `ingest_archive`, into a real embedded
redis-server, with the demo-model architecture (`new_base`: a 4-token frame budget, so 640x360
becomes 28x56 pixels and 2 tokens; 8 frames a chunk, alpha 16; random weights when no trained
demo model is shipped, which changes neither speed nor bytes) and the service's ingest and K/V
storage settings. A warm-up ingest of the 20 s clip keeps first-call costs out of the figure.

One row: the real-time factor (video seconds / wall seconds), the counts, and the seconds each
stage was busy (the pipeline's own always-on `StageTimes`). Decoding runs on its own thread
beside the rest, so decode_s is close to the wall time when decoding is the bottleneck, and the
stages add up to more than the wall time.
"""

from __future__ import annotations

import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from common import bench_main, cached_file, machine, model_placement, timer

from longwatch.memory.index import IndexRegistry
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.memory.store import ChunkStore, open_store
from longwatch.model.compressor import SummaryCompressor
from longwatch.model.config import ModelConfig
from longwatch.model.loading import DEMO_MODEL_DIR, LoadedModel, load_model
from longwatch.model.train.synthetic import SyntheticFootage
from longwatch.model.train.trainer import new_base
from longwatch.stream.archive import ArchiveProgress, ingest_archive
from longwatch.stream.pipeline import ModelRunner, StageTimes
from longwatch.stream.settings import IngestConfig, ServiceSettings, ingest_for_model


@dataclass(frozen=True)
class Footage:
    """What the benchmark's video is made of; its cache file is named after every field."""

    seconds: float
    width: int = 640
    height: int = 360
    fps: float = 30.0
    seed: int = 0

    @property
    def file_name(self) -> str:
        return f"footage-seed{self.seed}-{self.width}x{self.height}-{self.fps:g}fps-{self.seconds:g}s.mp4"


FULL = Footage(seconds=3600.0)
QUICK = Footage(seconds=20.0)


def cached_footage(footage: Footage, cache_dir: Path | None = None) -> Path:
    """The footage's mp4 in `cache_dir` (default: the benchmarks' cache), encoded on first use."""
    source = SyntheticFootage(footage.seed, footage.width, footage.height, footage.fps)
    return cached_file(footage.file_name, lambda path: source.write(path, footage.seconds), cache_dir)


def demo_model(folder: Path) -> LoadedModel:
    """The shipped demo model when there is one, else its architecture with random weights."""
    if (DEMO_MODEL_DIR / "base" / "config.json").is_file():
        return load_model(ModelConfig(**model_placement()), state_dir=folder)
    base = new_base(folder / "demo-base", seed=0, system_prompt=ModelConfig().system_prompt)
    return load_model(ModelConfig(path=base, **model_placement()))


def ingest_once(
    stream_id: str, video: Path, config: IngestConfig, runner: ModelRunner, store: ChunkStore
) -> tuple[ArchiveProgress, StageTimes, float]:
    """One archive ingest through the service's own path: the last progress, stage times, wall s."""
    times = StageTimes()
    progress = ingest_archive(
        stream_id, str(video), None, config, runner, store, IndexRegistry(store), stage_times=times
    )
    with timer() as t:
        final = deque(progress, maxlen=1)  # runs the ingest, keeping its last progress
    if not final or not final[0].done:
        raise RuntimeError(f"ingest of {video.name} ended without its final progress")
    return final[0], times, t["s"]


def run(quick: bool = False) -> list[dict]:
    footage = QUICK if quick else FULL
    video = cached_footage(footage)
    warmup = cached_footage(QUICK)
    with (
        tempfile.TemporaryDirectory(prefix="lw-bench-archive-") as tmp,
        EmbeddedRedis(Path(tmp) / "redis") as redis,
    ):
        lm = demo_model(Path(tmp))
        # The service's own choices: ingest settings from the model's card, K/V storage format.
        settings = ServiceSettings(ingest_explicit=frozenset())
        config = ingest_for_model(settings, lm.card)
        runner = ModelRunner(lm, SummaryCompressor(lm))
        with open_store(redis.url, kv_storage=settings.kv_storage) as store:
            ingest_once("warmup", warmup, config, runner, store)  # first-call costs out of the figure
            last, times, wall = ingest_once("archive", video, config, runner, store)
            record = store.get_stream("archive")
    if record is None or record.chunks != last.chunks_committed:
        raise RuntimeError(f"stream record does not match the ingest: {record}")
    row = {
        "bench": "archive_ingest",
        "video": f"{footage.width}x{footage.height} {footage.fps:g} fps {footage.seconds:g} s",
        "model": lm.name,
        "sample_fps": config.fps,
        "video_s": round(last.position_s, 2),
        "wall_s": round(wall, 3),
        "realtime_x": round(last.position_s / wall, 1),
        "frames_decoded": last.frames_decoded,
        "frames_sampled": last.frames_sampled,
        "tokens_seen": last.tokens_seen,
        "tokens_kept": last.tokens_kept,
        "chunks": last.chunks_committed,
        "bytes_stored": record.bytes_stored,
        "kv_storage": record.kv_storage,
    }
    row.update({name: round(s, 3) for name, s in times.as_dict().items()})
    row.update(machine())
    return [row]


def main() -> None:
    bench_main(run, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()

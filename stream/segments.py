"""An archive ingested in segments by several workers, equal chunk for chunk to one ingest.

A long file is split by chunk index into segments; each worker (a Ray actor holding a model:
stream/ray_ingest.py) makes the chunks of its segment and hands them back, and the server commits
them in order. A segment starts where an interrupted ingest would resume (stream/archive.py): the
worker reads the file's packets (without decoding them) to find the keyframe before its first
frame and decodes from there (stream/decode.py's seek: the same frames, times and counts as a
decode from the file's start), takes the last sampled frame before its segment as DiffFP's
reference (so the segment's first chunk is pruned against the frame before it, exactly as in one
front-to-back ingest), and stops once its segment is made. What a worker hands back is one safetensors blob (`SegmentResult.to_bytes`):
each chunk as its float safetensors blob (exact) and its pictures as bytes, the counters in JSON
metadata; the server parses and checks it like anything else it reads, never unpickles it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from longwatch.memory.chunk import ChunkCache
from longwatch.memory.records import CorruptData, IngestCounters, Picture
from longwatch.memory.serialization import chunk_from_bytes, chunk_to_bytes, safetensors_metadata
from longwatch.stream.decode import VideoFileReader
from longwatch.stream.pipeline import ModelRunner, StreamIngestor
from longwatch.stream.settings import IngestConfig

SEGMENTS_PER_WORKER = 2  # more, smaller segments than workers: a slow one holds the rest up less
SEGMENT_META_KEY = "longwatch.segment"
SEGMENT_FORMAT_VERSION = 1


@dataclass
class SegmentChunk:
    index: int
    blob: bytes  # chunk_to_bytes(chunk, "float"): the chunk exactly as computed
    counters: dict[str, int]  # what the single ingest would have committed with it
    pictures: list[tuple[float, bytes]]  # (time, JPEG)

    def chunk(self, name: str) -> ChunkCache:
        return chunk_from_bytes(self.blob, name=name)

    def picture_list(self) -> list[Picture]:
        return [Picture(self.index, t, image) for t, image in self.pictures]


@dataclass
class SegmentResult:
    first_chunk: int
    chunks: list[SegmentChunk] = field(default_factory=list)
    reached_end: bool = False  # the file ended inside (or before) this segment
    # Counters left after the last chunk once the file ended (frames decoded, for one): what one
    # ingest stores with its final add_counters.
    trailing: dict[str, int] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """One safetensors blob: chunk and picture bytes as uint8 tensors, the rest as JSON."""
        tensors: dict[str, torch.Tensor] = {}
        chunks = []
        for c in self.chunks:
            tensors[f"chunk.{c.index}"] = _as_tensor(c.blob)
            for k, (_, image) in enumerate(c.pictures):
                tensors[f"picture.{c.index}.{k}"] = _as_tensor(image)
            chunks.append(
                {"index": c.index, "counters": c.counters, "picture_times": [t for t, _ in c.pictures]}
            )
        meta = {
            "version": SEGMENT_FORMAT_VERSION,
            "first_chunk": self.first_chunk,
            "reached_end": self.reached_end,
            "trailing": self.trailing,
            "chunks": chunks,
        }
        return save_safetensors_bytes(tensors, metadata={SEGMENT_META_KEY: json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "a Ray segment") -> SegmentResult:
        """Parse a blob of to_bytes; anything else is CorruptData naming `name`."""
        data = bytes(data)
        meta = safetensors_metadata(data, SEGMENT_META_KEY, name)
        try:
            if meta["version"] != SEGMENT_FORMAT_VERSION:
                raise ValueError(f"format version {meta['version']!r}")
            tensors = load_safetensors_bytes(data)
            chunks = [
                SegmentChunk(
                    int(c["index"]),
                    _as_bytes(tensors[f"chunk.{c['index']}"]),
                    {str(k): int(v) for k, v in c["counters"].items()},
                    [
                        (float(t), _as_bytes(tensors[f"picture.{c['index']}.{k}"]))
                        for k, t in enumerate(c["picture_times"])
                    ],
                )
                for c in meta["chunks"]
            ]
            return cls(
                int(meta["first_chunk"]),
                chunks,
                bool(meta["reached_end"]),
                {str(k): int(v) for k, v in meta["trailing"].items()},
            )
        except Exception as e:  # any parse failure of foreign bytes is corruption, whatever its type
            raise CorruptData(
                f"{name}: not a segment's result ({type(e).__name__}: {str(e)[:120]})"
            ) from None


def _as_tensor(blob: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)


def _as_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.numpy().tobytes())


def plan_segments(first_chunk: int, expected_chunks: int, workers: int) -> list[tuple[int, int]]:
    """(first chunk, number of chunks) per segment from `first_chunk` on; the last one's count is 0:
    to the end of the file, however long it turns out to be."""
    left = max(1, expected_chunks - first_chunk)
    n_segments = max(1, min(left, workers * SEGMENTS_PER_WORKER))
    size = math.ceil(left / n_segments)
    starts = list(range(first_chunk, first_chunk + left, size))
    return [(start, size) for start in starts[:-1]] + [(starts[-1], 0)]


def expected_chunks(duration_s: float, config: IngestConfig) -> int:
    """How many chunks a file of this duration should make (an estimate: the last segment is
    open-ended, so a wrong one costs balance, never chunks)."""
    return max(1, math.ceil((math.floor(duration_s * config.fps) + 1) / config.frames_per_chunk))


class _SegmentIngestor(StreamIngestor):
    """A StreamIngestor whose chunks are handed back instead of committed."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.made: list[SegmentChunk] = []

    def _store(self, chunk: ChunkCache, counters: IngestCounters, pictures: list[Picture]) -> int:
        self.made.append(
            SegmentChunk(
                chunk.index,
                chunk_to_bytes(chunk, "float"),
                dict(counters.items()),
                [(p.time_s, p.image) for p in pictures],
            )
        )
        return 0


def ingest_segment(
    source: str | bytes,
    stream_id: str,
    config: IngestConfig,
    runner: ModelRunner,
    first_chunk: int,
    n_chunks: int,
    is_cancelled: Callable[[], bool] = lambda: False,
) -> SegmentResult:
    """Make chunks first_chunk .. first_chunk + n_chunks - 1 of the file (n_chunks 0: to its end)."""
    reader = VideoFileReader(io.BytesIO(source) if isinstance(source, bytes) else source, fps=config.fps)
    # No store and no index: _store hands each chunk back, and finish() is never called.
    ingestor = _SegmentIngestor(stream_id, config, runner, None, None, first_chunk_index=first_chunk)
    skip = first_chunk * config.frames_per_chunk  # sampled frames of the chunks before the segment
    stop = first_chunk + n_chunks if n_chunks else None
    result = SegmentResult(first_chunk)
    ended = True
    for frame in reader.frames(first=max(0, skip - 1), seek=True):
        if frame.index < skip:  # the last frame before the segment: DiffFP's reference
            ingestor.continue_after(frame)
            continue
        if (stop is not None and ingestor.next_index >= stop) or is_cancelled():
            ended = False
            break
        ingestor.push(frame)
    if ended:
        ingestor.count_decoded(reader.frames_decoded)
        if ingestor.pending:
            ingestor._commit_pending()  # the file's last, partial chunk
        result.reached_end = True
        result.trailing = dict(ingestor.counters.items())
    result.chunks = ingestor.made
    return result

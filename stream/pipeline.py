"""The ingest pipeline of one stream: sampled frames in, committed chunks out.

frames -> resize + patchify -> DiffFP (against the previous frame, across chunk boundaries)
-> vision tower + projector on the frames -> keep DiffFP's tokens -> summary compression
-> Redis (chunk cache, retrieval vector, counters in one transaction) -> FAISS index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import torch

from longwatch.memory.chunk import ChunkCache
from longwatch.memory.index import IndexRegistry
from longwatch.memory.records import IngestCounters, Picture
from longwatch.memory.store import ChunkStore, StoreRetry
from longwatch.model.compressor import SummaryCompressor
from longwatch.model.diffp import DiffFramePruner, frames_kept
from longwatch.model.frames import FrameGrid, frames_to_pixel_values, grid_for
from longwatch.model.loading import LoadedModel
from longwatch.model.vision import chunk_frames
from longwatch.stream import metrics
from longwatch.stream.decode import SampledFrame
from longwatch.stream.images import check_aspect
from longwatch.stream.model_lock import ARCHIVE, ASK, LIVE, ModelLock
from longwatch.stream.pictures import PictureMode, chosen_frames, encode_picture
from longwatch.stream.settings import IngestConfig
from longwatch.stream.vision_batch import ChunkLayout, VisionBatcher


@dataclass
class ModelRunner:
    """The loaded model and the lock that serialises its use (stream/model_lock.py).

    The summary-token mask reaches the projections through module state for the length of one
    forward pass, so two passes must not interleave. Ingest and Ask both go through here; an
    answer's next step goes before an ingest's next chunk.
    """

    lm: LoadedModel
    compressor: SummaryCompressor
    lock: ModelLock = field(default_factory=ModelLock)
    share_summary: bool = False  # summary passes shared too (stream/vision_batch.py)
    vision: VisionBatcher = field(init=False)  # vision passes shared by chunks that wait together

    def __post_init__(self) -> None:
        self.vision = VisionBatcher(self.lm, self.share_summary, lambda: self.lock.asks_waiting())


def forget_stream(stream_id: str, runner: ModelRunner, store: ChunkStore, indexes: IndexRegistry) -> int:
    """Remove all of a stream: its keys in Redis, its FAISS index and keep-raw mode's running cache.

    Returns how many Redis keys were deleted (0 if it had none).
    """
    deleted = store.delete_stream(stream_id)
    indexes.drop(stream_id)
    runner.compressor.end_stream(stream_id)
    return deleted


Stage = Literal["decode", "resize", "diffp", "vision", "compression", "pictures", "storage"]


@dataclass
class StageTimes:
    """Seconds each ingest stage has been busy: always on, one clock read pair per stage and chunk.

    decode: demuxing, decoding and colour-converting the sampled frames (the archive reader);
    resize: frames to the model's grid and patch rows; diffp: the keep mask; vision: the vision
    tower and projector; compression: the summary-token pass; pictures: scaling and encoding the
    chunk's pictures; storage: the Redis transaction and the FAISS add. Stages that run on different threads overlap, so the sum can exceed the wall time.
    """

    decode_s: float = 0.0
    resize_s: float = 0.0
    diffp_s: float = 0.0
    vision_s: float = 0.0
    compression_s: float = 0.0
    pictures_s: float = 0.0
    storage_s: float = 0.0

    @contextmanager
    def measure(self, stage: Stage) -> Iterator[None]:
        """`with times.measure("vision"): ...` adds the block's wall time to `vision_s`."""
        name = f"{stage}_s"
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, name, getattr(self, name) + time.perf_counter() - start)

    def as_dict(self) -> dict[str, float]:
        """{"decode_s": seconds, ...}, in pipeline order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def summary(self) -> str:
        """One line for logs: `decode 1.2 s, resize 0.4 s, ...`."""
        return ", ".join(f"{name.removesuffix('_s')} {s:.1f} s" for name, s in self.as_dict().items())


@dataclass
class CommittedChunk:
    index: int
    start_s: float
    end_s: float
    bytes_written: int
    tokens_kept: int


class StreamIngestor:
    """Turns one stream's sampled frames into committed chunks; holds the stream's DiffFP state."""

    def __init__(
        self,
        stream_id: str,
        config: IngestConfig,
        runner: ModelRunner,
        store: ChunkStore,
        indexes: IndexRegistry,
        first_chunk_index: int = 0,
        on_commit: Callable[[CommittedChunk], None] | None = None,
        stage_times: StageTimes | None = None,
        retry: StoreRetry | None = None,
        give_up: Callable[[], bool] = lambda: False,
        source: str = "archive",
        fence: int | None = None,
    ) -> None:
        """retry: how long a commit waits out an unavailable Redis (give_up() ends the wait early,
        as a shutdown does). source: "archive" or "live", for the metrics. fence: the stream
        lease's token, carried by every write (stream/leases.py)."""
        self.stream_id = stream_id
        self.fence = fence
        self.source = source
        self.picture_mode = PictureMode.parse(config.pictures, config.picture_side)
        self.config = config
        self.runner = runner
        self.store = store
        self.indexes = indexes
        self.on_commit = on_commit
        self.next_index = first_chunk_index
        self.grid: FrameGrid | None = None
        self.pruner = DiffFramePruner(threshold=config.diff_threshold)
        self.pending: list[SampledFrame] = []
        self.counters = IngestCounters()  # not yet stored
        self.totals = IngestCounters()  # everything this ingestor has seen, stored or not
        self.chunks_committed = 0
        # Of committed chunks (previews not counted); a caller may pass its own to read them.
        self.stage_times = stage_times if stage_times is not None else StageTimes()
        self.retry = retry or StoreRetry()
        self.give_up = give_up

    def count_decoded(self, n: int = 1) -> None:
        self.counters.frames_decoded += n
        self.totals.frames_decoded += n

    def _grid_of(self, frame: SampledFrame) -> FrameGrid:
        if self.grid is None:
            h, w = frame.image.shape[:2]
            check_aspect(w, h)  # BadRequest: the video's fault, not the service's
            self.grid = grid_for(h, w, self.config.max_tokens_per_frame)
        return self.grid

    def continue_after(self, frame: SampledFrame) -> None:
        """Make `frame`, the last one of the chunks already committed, DiffFP's reference.

        How an interrupted archive resumes: its next chunk is pruned against the frame before
        it, as it would have been had ingest never stopped.
        """
        grid = self._grid_of(frame)
        self.pruner.push(frames_to_pixel_values(frame.image[None], grid), grid, 1)

    def push(self, frame: SampledFrame) -> None:
        """Add one sampled frame; commits a chunk when enough frames are pending."""
        self._grid_of(frame)
        self.pending.append(frame)
        self.counters.frames_sampled += 1
        self.totals.frames_sampled += 1
        if len(self.pending) >= self.config.frames_per_chunk:
            self._commit_pending()

    def finish(self) -> None:
        """Commit the last partial chunk and any counters not yet stored."""
        if self.pending:
            self._commit_pending()
        if self.counters != IngestCounters():
            self.store.add_counters(self.stream_id, self.counters, fence=self.fence)
            self.counters = IngestCounters()

    def preview(self) -> ChunkCache | None:
        """The pending (not yet committed) frames compressed into a chunk that is never stored.

        Ask uses it to see a live stream's latest seconds before their chunk fills. DiffFP runs
        on a copy of the pruner, so the stream's own state is untouched. None when nothing is
        pending, and in keep-raw mode with stream context, whose compressor extends a running
        per-stream cache that a throwaway chunk must not touch. The caller keeps `push` from running meanwhile.
        """
        config = self.runner.lm.config
        if not self.pending or (config.mode == "raw" and config.raw_context == "stream"):
            return None
        pruner = DiffFramePruner(self.pruner.threshold, self.pruner.min_tokens, self.pruner.merge_size)
        pruner.load_state(self.pruner.state())
        chunk, _ = self._compress(list(self.pending), pruner, self.next_index, StageTimes(), ASK)
        return chunk

    def _compress(
        self,
        frames: list[SampledFrame],
        pruner: DiffFramePruner,
        index: int,
        times: StageTimes,
        priority: int | None = None,
    ) -> tuple[ChunkCache, torch.Tensor]:
        """Chunk `index` made of `frames` (DiffFP through `pruner`), and DiffFP's keep mask;
        `priority` for the model (default: this stream's kind, live or archive)."""
        grid = self.grid
        assert grid is not None  # set by the first push
        with times.measure("resize"):
            images = np.stack([f.image for f in frames])  # (T, H, W, 3) uint8
            pixel_values = frames_to_pixel_values(images, grid)  # (T * gh * gw, 3 * 14 * 14)
        n = len(frames)
        with times.measure("diffp"):
            keep = pruner.push(pixel_values, grid, n)  # (T * tokens_per_frame,) bool
        if priority is None:
            priority = LIVE if self.source == "live" else ARCHIVE
        times_s = [f.pts_s for f in frames]
        layout = ChunkLayout(times_s, keep, index == 0, times_s[-1] + 1.0 / self.config.fps)
        request = self.runner.vision.submit(pixel_values, n, grid.grid_h, grid.grid_w, layout)
        with self.runner.lock.hold(priority), torch.no_grad():
            with times.measure("vision"):
                features = self.runner.vision.features(request)
            shared = self.runner.vision.summary(request)  # made with the chunks beside it
            encoded, kv = shared or (
                chunk_frames(times_s, features, keep, layout.first_in_stream, layout.end_s),
                None,
            )
            with times.measure("compression"):
                chunk = self.runner.compressor.compress(self.stream_id, index, encoded, kv)
        return chunk, keep

    def _pictures(
        self, frames: list[SampledFrame], keep: torch.Tensor, tokens_per_frame: int
    ) -> list[Picture]:
        """The chunk's pictures (stream/pictures.py): which frames the config says, as JPEGs."""
        kept_per_frame = keep.reshape(len(frames), tokens_per_frame).sum(dim=1).tolist()
        chosen = chosen_frames(self.picture_mode, frames[0].index, kept_per_frame)
        with self.stage_times.measure("pictures"):
            return [
                Picture(
                    self.next_index, frames[i].pts_s, encode_picture(frames[i].image, self.picture_mode.side)
                )
                for i in chosen
            ]

    def _store(self, chunk: ChunkCache, counters: IngestCounters, pictures: list[Picture]) -> int:
        """Commit one chunk with the counters since the last commit, and index it; the bytes stored.
        (A segment worker overrides this to hand its chunks back instead: stream/segments.py.)"""
        started = time.perf_counter()
        written = self.retry.call(
            lambda: self.store.commit_chunk(chunk, counters, pictures, fence=self.fence), self.give_up
        )
        metrics.chunk_committed(
            self.stream_id, self.source, chunk.n_frames, written, time.perf_counter() - started
        )
        vector = chunk.retrieval.numpy()
        self.retry.call(lambda: self.indexes.add(self.stream_id, chunk.index, vector), self.give_up)
        return written

    def _commit_pending(self) -> None:
        frames, self.pending = self.pending, []
        chunk, keep = self._compress(frames, self.pruner, self.next_index, self.stage_times)
        n, tpf = len(frames), chunk.tokens_seen // len(frames)
        kept = chunk.tokens_kept
        n_kept_frames = frames_kept(keep, tpf, self.pruner.min_tokens)
        for c in (self.counters, self.totals):
            c.tokens_seen += n * tpf
            c.tokens_kept += kept
            c.frames_kept += n_kept_frames
        pictures = self._pictures(frames, keep, tpf)
        with self.stage_times.measure("storage"):
            written = self._store(chunk, self.counters, pictures)
            self.counters = IngestCounters()
        self.next_index += 1
        self.chunks_committed += 1
        if self.on_commit is not None:
            self.on_commit(
                CommittedChunk(chunk.index, chunk.start_s, chunk.end_s, written, chunk.tokens_kept)
            )

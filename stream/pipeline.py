"""The ingest pipeline of one stream: sampled frames in, committed chunks out.

frames -> resize + patchify -> DiffFP (against the previous frame, across chunk boundaries)
-> vision tower + projector on the frames -> keep DiffFP's tokens -> summary compression
-> Redis (chunk cache, retrieval vector, counters in one transaction) -> FAISS index.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from longwatch.memory.chunk import ChunkCache
from longwatch.memory.index import IndexRegistry
from longwatch.memory.records import IngestCounters
from longwatch.memory.store import ChunkStore
from longwatch.model.compressor import ChunkFrames, SummaryCompressor
from longwatch.model.diffp import DiffFramePruner, frames_kept
from longwatch.model.frames import FrameGrid, frames_to_pixel_values, grid_for
from longwatch.model.loading import LoadedModel
from longwatch.model.vision import encode_frames
from longwatch.stream.decode import SampledFrame
from longwatch.stream.settings import IngestConfig


@dataclass
class ModelRunner:
    """The loaded model and the lock that serialises its use.

    The summary-token mask reaches the projections through module state for the length of one
    forward pass, so two passes must not interleave. Ingest and Ask both go through here.
    """

    lm: LoadedModel
    compressor: SummaryCompressor
    lock: threading.Lock = field(default_factory=threading.Lock)


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
    ) -> None:
        self.stream_id = stream_id
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

    def count_decoded(self, n: int = 1) -> None:
        self.counters.frames_decoded += n
        self.totals.frames_decoded += n

    def push(self, frame: SampledFrame) -> None:
        """Add one sampled frame; commits a chunk when enough frames are pending."""
        if self.grid is None:
            h, w = frame.image.shape[:2]
            self.grid = grid_for(h, w, self.config.max_tokens_per_frame)
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
            self.store.add_counters(self.stream_id, self.counters)
            self.counters = IngestCounters()

    def preview(self) -> ChunkCache | None:
        """The pending (not yet committed) frames compressed into a chunk that is never stored.

        Ask uses it to see a live stream's latest seconds before their chunk fills. DiffFP runs
        on a copy of the pruner, so the stream's own state is untouched. None when nothing is
        pending, and in keep-raw mode, whose compressor extends a running per-stream cache that
        a throwaway chunk must not touch. The caller keeps `push` from running meanwhile.
        """
        if not self.pending or self.runner.lm.config.mode == "raw":
            return None
        pruner = DiffFramePruner(self.pruner.threshold, self.pruner.min_tokens, self.pruner.merge_size)
        pruner.load_state(self.pruner.state())
        chunk, _ = self._compress(list(self.pending), pruner, self.next_index)
        return chunk

    def _compress(
        self, frames: list[SampledFrame], pruner: DiffFramePruner, index: int
    ) -> tuple[ChunkCache, torch.Tensor]:
        """Chunk `index` made of `frames` (DiffFP through `pruner`), and DiffFP's keep mask."""
        grid = self.grid
        assert grid is not None  # set by the first push
        images = np.stack([f.image for f in frames])  # (T, H, W, 3) uint8
        pixel_values = frames_to_pixel_values(images, grid)  # (T * gh * gw, 3 * 14 * 14)
        n = len(frames)
        keep = pruner.push(pixel_values, grid, n)  # (T * tokens_per_frame,) bool
        tpf = grid.tokens_per_frame
        with self.runner.lock:
            features = encode_frames(self.runner.lm, pixel_values, n, grid.grid_h, grid.grid_w)
            kept = features[keep.to(features.device)]
            per_frame = keep.view(n, tpf).sum(dim=1).tolist()
            interval = 1.0 / self.config.fps
            chunk_frames = ChunkFrames(
                frame_times=[f.pts_s for f in frames],
                features=kept,
                tokens_per_frame=[int(x) for x in per_frame],
                first_in_stream=index == 0,
                tokens_seen=n * tpf,
                end_s=frames[-1].pts_s + interval,
            )
            chunk = self.runner.compressor.compress(self.stream_id, index, chunk_frames)
        return chunk, keep

    def _commit_pending(self) -> None:
        frames, self.pending = self.pending, []
        chunk, keep = self._compress(frames, self.pruner, self.next_index)
        n, tpf = len(frames), chunk.tokens_seen // len(frames)
        kept = chunk.tokens_kept
        n_kept_frames = frames_kept(keep, tpf, self.pruner.min_tokens)
        for c in (self.counters, self.totals):
            c.tokens_seen += n * tpf
            c.tokens_kept += kept
            c.frames_kept += n_kept_frames
        written = self.store.commit_chunk(chunk, self.counters)
        self.counters = IngestCounters()
        self.indexes.add(self.stream_id, chunk.index, chunk.retrieval.numpy())
        self.next_index += 1
        self.chunks_committed += 1
        if self.on_commit is not None:
            self.on_commit(
                CommittedChunk(chunk.index, chunk.start_s, chunk.end_s, written, chunk.tokens_kept)
            )

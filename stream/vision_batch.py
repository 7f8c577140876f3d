"""The vision tower run once over the chunks of several streams that wait for it together.

Each ingest registers its chunk's frames (`submit`) and waits for the model. Whichever waiter the
model lock serves first runs the vision tower over every waiting chunk of the same token grid (up
to MAX_BATCH_FRAMES frames) and hands each its features; the others find theirs ready when their
turn comes, and go on to their summary pass in the same turn. Vision attention is per frame, so a frame's features do not depend
on what else is in the pass; tests/test_vision_batch.py checks that the batched features equal
one pass per chunk, bit for bit. A chunk alone is encoded alone, as before.

With `share_summary` (`serve --share-summary-passes`) the same pass goes on to the summary pass
of every chunk in it whose request carries its layout (times, DiffFP's mask), as one padded
batch (model/compressor.py's `run_chunks`): each chunk's K/V is then what its own pass makes up
to float rounding, not bit for bit, so it is a choice, off by default. While an answer waits for
the model the chunks' summary passes are left to each (one short pass at a time, an answer's step
between them), as a shared pass would make the answer wait for all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from longwatch.model.compressor import ChunkFrames, ChunkKV, run_chunks
from longwatch.model.loading import LoadedModel
from longwatch.model.vision import chunk_frames, encode_frames

MAX_BATCH_FRAMES = 64  # a pass's frames: 8 chunks of 8, bounding a batch's memory


@dataclass(eq=False)
class ChunkLayout:
    """What a chunk's summary pass needs besides its features: `chunk_frames`' other arguments."""

    frame_times: list[float]
    keep: torch.Tensor  # DiffFP's mask, (n_frames * tokens_per_frame,) bool
    first_in_stream: bool
    end_s: float


@dataclass(eq=False)  # a request is itself: compared by identity, never by its tensors
class _Request:
    pixel_values: torch.Tensor  # (n_frames * grid_h * grid_w, 3 * patch^2)
    n_frames: int
    grid: tuple[int, int]
    layout: ChunkLayout | None = None
    features: torch.Tensor | None = None
    frames: ChunkFrames | None = None  # with a shared summary pass: the chunk, and its pass
    kv: ChunkKV | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class VisionBatcher:
    """submit() a chunk's frames, then, holding the model lock, features() for them."""

    def __init__(
        self, lm: LoadedModel, share_summary: bool = False, asks_waiting: Callable[[], bool] = lambda: False
    ) -> None:
        self.lm = lm
        self.share_summary = share_summary and lm.config.mode != "raw"
        self.asks_waiting = asks_waiting
        self.summary_passes = 0  # shared summary passes run, and the chunks they made
        self.summary_chunks = 0
        self._waiting: list[_Request] = []
        self._mu = threading.Lock()  # the list only; never held across a pass
        self.passes = 0  # vision passes run, and the chunks they encoded: batching at work
        self.chunks = 0

    def submit(
        self,
        pixel_values: torch.Tensor,
        n_frames: int,
        grid_h: int,
        grid_w: int,
        layout: ChunkLayout | None = None,
    ) -> _Request:
        """Register a chunk's frames before waiting for the model, so a pass before its turn can
        take them along; with its layout, its summary pass too (when summary passes are shared)."""
        request = _Request(pixel_values, n_frames, (grid_h, grid_w), layout)
        with self._mu:
            self._waiting.append(request)
        return request

    def features(self, request: _Request) -> torch.Tensor:
        """The chunk's features (n_frames * tokens per frame, hidden); call with the model lock
        held. Runs a pass over it and the chunks waiting beside it, unless one already did."""
        if not request.done.is_set():
            self._run(self._take(request))
        if request.error is not None:
            raise request.error
        assert request.features is not None
        return request.features

    def summary(self, request: _Request) -> tuple[ChunkFrames, ChunkKV] | None:
        """The chunk and its summary pass, when a shared pass made them (after `features`)."""
        if request.frames is None or request.kv is None:
            return None
        return request.frames, request.kv

    def _take(self, first: _Request) -> list[_Request]:
        """`first` and the requests waiting beside it with its grid, oldest first, within the cap."""
        with self._mu:
            batch, frames = [first], first.n_frames
            for r in self._waiting:
                if r is not first and r.grid == first.grid and frames + r.n_frames <= MAX_BATCH_FRAMES:
                    batch.append(r)
                    frames += r.n_frames
            self._waiting = [r for r in self._waiting if r not in batch]
        return batch

    def _run(self, batch: list[_Request]) -> None:
        grid_h, grid_w = batch[0].grid
        try:
            with torch.no_grad():
                features = encode_frames(
                    self.lm,
                    torch.cat([r.pixel_values for r in batch]),
                    sum(r.n_frames for r in batch),
                    grid_h,
                    grid_w,
                )  # (sum of tokens, hidden)
            per_frame = features.shape[0] // sum(r.n_frames for r in batch)
            for r, part in zip(
                batch, torch.split(features, [r.n_frames * per_frame for r in batch]), strict=True
            ):
                r.features = part
            laid_out = [r for r in batch if r.layout is not None]
            # Alone, or with an answer waiting, each chunk's compressor runs its own pass as before.
            if self.share_summary and len(laid_out) > 1 and not self.asks_waiting():
                for r in laid_out:
                    lay = r.layout
                    assert lay is not None and r.features is not None
                    r.frames = chunk_frames(
                        lay.frame_times, r.features, lay.keep, lay.first_in_stream, lay.end_s
                    )
                kvs = run_chunks(self.lm, [r.frames for r in laid_out], self.lm.config.alpha)
                for r, kv in zip(laid_out, kvs, strict=True):
                    r.kv = kv
                self.summary_passes += 1
                self.summary_chunks += len(laid_out)
        except BaseException as e:  # every chunk of the pass fails the same way
            for r in batch:
                r.error = e
        finally:
            self.passes += 1
            self.chunks += len(batch)
            for r in batch:
                r.done.set()

"""The ingest speed-ups change nothing but speed: frames left undecoded, decoding on its own thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from footage import real_clip

from longwatch.memory.index import IndexRegistry
from longwatch.memory.store import RedisChunkStore
from longwatch.model.compressor import SummaryCompressor
from longwatch.model.config import ModelConfig
from longwatch.model.loading import load_model
from longwatch.model.tiny import build_tiny_model
from longwatch.model.train.synthetic import SyntheticFootage
from longwatch.proto.streams import StreamState
from longwatch.stream.archive import decoded_ahead, ingest_archive
from longwatch.stream.decode import SampledFrame, TimeSampler, UnsampledFrameSkipper, VideoFileReader
from longwatch.stream.errors import BadRequest
from longwatch.stream.pipeline import ModelRunner, StageTimes
from longwatch.stream.settings import IngestConfig


def decode_everything(path: Path, fps: float) -> tuple[list[tuple[float, np.ndarray]], int, float]:
    """The oracle: every frame decoded, the first at or after each grid point kept; the count and end."""
    sampler, origin, kept, count, t = TimeSampler(fps), None, [], 0, 0.0
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            count += 1
            origin = frame.time if origin is None else origin
            t = frame.time - origin
            if sampler.offer(t):
                kept.append((t, frame.to_ndarray(format="rgb24")))
    return kept, count, t


def assert_same_frames(path: Path, fps: float) -> None:
    expected, count, last_s = decode_everything(path, fps)
    reader = VideoFileReader(str(path), fps=fps)
    got = list(reader)
    assert [f.pts_s for f in got] == [t for t, _ in expected]
    assert all(np.array_equal(f.image, image) for f, (_, image) in zip(got, expected, strict=True))
    assert reader.frames_decoded == count
    assert reader.position_s == last_s  # even when the last frames went undecoded


@pytest.fixture(scope="module")
def footage_30fps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """H.264 with B-frames at 30 fps: most frames are non-reference and not sampled."""
    folder = tmp_path_factory.mktemp("speed")
    return SyntheticFootage(seed=2, width=192, height=108, fps=30).write(folder / "f30.mp4", 12)


@pytest.mark.parametrize("fps", [1.0, 2.5, 7.0, 30.0])
def test_skipping_unsampled_frames_keeps_the_same_frames(footage_30fps: Path, fps: float) -> None:
    assert_same_frames(footage_30fps, fps)


@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"])
@pytest.mark.parametrize("fps", [1.0, 3.0])
def test_skipping_on_real_clips_keeps_the_same_frames(name: str, fps: float) -> None:
    assert_same_frames(real_clip(name), fps)


def test_most_unsampled_frames_of_30fps_footage_may_be_skipped(footage_30fps: Path) -> None:
    with av.open(str(footage_30fps)) as container:
        stream = container.streams.video[0]
        skipper = UnsampledFrameSkipper(TimeSampler(1.0), stream.time_base)
        decisions = []
        for packet in container.demux(stream):
            decisions.append(skipper.may_skip(packet))
            for frame in packet.decode():
                skipper.frame_out(frame.time)
    assert sum(decisions) > 0.8 * len(decisions)  # 29 of each 30 frames are not sampled


@dataclass
class FakePacket:
    pts: int | None
    size: int = 100
    is_discard: bool = False
    is_corrupt: bool = False


def test_skipper_skips_only_behind_an_earlier_frame_of_the_same_slot() -> None:
    skipper = UnsampledFrameSkipper(TimeSampler(1.0), Fraction(1, 10))  # pts in tenths of a second
    assert not skipper.may_skip(FakePacket(0))  # before the first frame fixes the origin
    assert not skipper.may_skip(FakePacket(3))
    skipper.frame_out(0.0)
    assert skipper.may_skip(FakePacket(1))  # 0 is earlier in slot 0
    assert not skipper.may_skip(FakePacket(14))  # first seen of slot 1
    assert not skipper.may_skip(FakePacket(12))  # earlier than 14: now slot 1's first
    assert skipper.may_skip(FakePacket(15))
    assert not skipper.may_skip(FakePacket(0, size=0))  # a flush packet
    assert not skipper.may_skip(FakePacket(16, is_discard=True))
    assert not skipper.may_skip(FakePacket(None))  # no timestamp: skipping stops for good
    assert not skipper.may_skip(FakePacket(17))


def test_skipper_stops_when_frames_come_out_of_order() -> None:
    skipper = UnsampledFrameSkipper(TimeSampler(1.0), Fraction(1, 10))
    skipper.frame_out(0.0)
    skipper.frame_out(0.5)
    skipper.frame_out(0.4)
    assert not skipper.may_skip(FakePacket(2)) and not skipper.may_skip(FakePacket(3))


def frames_then(n: int, error: Exception | None, closed: threading.Event) -> Iterator[SampledFrame]:
    try:
        for i in range(n):
            yield SampledFrame(i, float(i), np.zeros((2, 2, 3), np.uint8))
        if error is not None:
            raise error
    finally:
        closed.set()


def test_read_ahead_hands_over_every_frame_in_order_and_counts_decoding() -> None:
    closed, times = threading.Event(), StageTimes()
    got = [f.index for f in decoded_ahead(frames_then(50, None, closed), depth=3, times=times)]
    assert got == list(range(50)) and closed.is_set() and times.decode_s > 0


def test_read_ahead_raises_the_decoding_error_after_the_frames_before_it() -> None:
    closed, got = threading.Event(), []
    with pytest.raises(ValueError, match="corrupt"):
        for frame in decoded_ahead(frames_then(5, ValueError("corrupt"), closed), 2, StageTimes()):
            got.append(frame.index)
    assert got == list(range(5)) and closed.is_set()


def test_closing_the_read_ahead_stops_its_thread_and_closes_the_source() -> None:
    closed = threading.Event()
    ahead = decoded_ahead(frames_then(10_000, None, closed), 2, StageTimes())
    assert next(ahead).index == 0
    ahead.close()
    assert closed.is_set()
    assert not any(t.name == "longwatch-decode" for t in threading.enumerate())


def test_a_cancelled_archive_stops_its_decoding_thread_and_keeps_what_it_committed(
    tmp_path: Path, footage_30fps: Path, store: RedisChunkStore
) -> None:
    lm = load_model(ModelConfig(path=build_tiny_model(tmp_path / "model", seed=0)))
    config = IngestConfig(fps=1.0, frames_per_chunk=2, max_tokens_per_frame=4)
    polls = iter(range(100))
    progress = ingest_archive(
        "cut",
        str(footage_30fps),
        None,
        config,
        ModelRunner(lm, SummaryCompressor(lm)),
        store,
        IndexRegistry(store),
        is_cancelled=lambda: next(polls) >= 5,  # after a couple of chunks
    )
    acked = []
    with pytest.raises(BadRequest, match="ingest stopped after 2 chunks"):
        for p in progress:
            acked.append(p.chunks_committed)
    record = store.get_stream("cut")
    assert record.state == StreamState.INTERRUPTED and record.chunks == acked[-1] == 2
    assert [s.index for s in store.chunk_spans("cut")] == [0, 1]  # what was acknowledged, no more
    assert not any(t.name == "longwatch-decode" for t in threading.enumerate())

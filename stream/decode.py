"""Decoding video files and byte blobs with PyAV, sampled by presentation time.

The archive path of ingest starts here: open a file (or the bytes of one), check that it
holds a decodable video stream, decode it once front to back, and keep the first frame at
or after each 1/fps grid point. Sampling is by presentation time, never by frame count, so
variable-frame-rate files and dropped frames still give evenly spaced samples, and the same
`TimeSampler` serves live streams whose frames arrive one by one.

Every way a source can be unusable ends in one `VideoDecodeError` with a one-line reason;
the frames already yielded before a mid-file failure are good and stay usable.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import av.container
import av.error
import av.video.stream
import numpy as np

# A path, the whole file in memory, or a seekable binary file object (read from its start).
Source = str | os.PathLike[str] | bytes | BinaryIO

# Tolerance on "decoding ended early" when the video stream records its own duration (mp4,
# mov): a few frame intervals cover rounding and the last frame's display time.
_SHORT_BY_FRAMES = 3
_SHORT_MIN_S = 0.5
# Containers that only know an overall duration (mkv, webm, ts) may count a longer audio
# track in it: allow more before calling the video truncated.
_LOOSE_MIN_S = 2.0
_LOOSE_FRACTION = 0.02


class VideoDecodeError(ValueError):
    """A source that is not a usable video; the message is one line saying why."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream, before decoding it."""

    duration_s: float | None  # of the video stream where recorded, else of the container
    width: int
    height: int
    avg_fps: float | None
    codec: str
    frames_estimate: int | None  # from the container's index, else duration x fps


@dataclass(frozen=True)
class SeekPoint:
    """Where a decode that starts at sampled frame `first` may begin instead of the file's start."""

    keyframe_pts: int  # the keyframe decoding starts from (the last at or before the target)
    target_pts: int  # sampled frame `first`'s timestamp
    next_slot: int  # the sampler's slot for it
    frames_before: int  # frames read before the keyframe in a front-to-back decode
    origin: float  # the file's first decoded frame's time: sampled times count from it
    size: tuple[int, int]  # (width, height) of its first frame: the whole stream's frame size


class _SeekMissed(Exception):
    """The decoder did not start where the seek point said: decode from the file's start instead."""


@dataclass(frozen=True)
class SampledFrame:
    """One kept frame: its sample number, its time, its pixels."""

    index: int  # sample number within the stream, from 0, contiguous
    pts_s: float  # seconds from the stream's first decoded frame
    image: np.ndarray  # (H, W, 3) uint8 RGB


class TimeSampler:
    """Keeps the first frame at or after each grid point k / fps (k = 0, 1, 2, ...).

    Online and stateful, so one sampler serves an archive decoded front to back and a live
    stream whose frames arrive one at a time. Each grid slot gets at most one frame; a frame
    whose timestamp jumps over several slots fills one and sampling moves past the rest
    (no duplicated frames to pad the gap). Frames going back in time are refused.
    """

    # Timestamps are rationals rounded to float: 0.3 s at 10 fps must count as slot 3.
    _EPS = 1e-6

    def __init__(self, fps: float) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps}")
        self.fps = fps
        self._next_slot = 0  # the lowest grid slot that has no frame yet

    @property
    def next_time_s(self) -> float:
        """The earliest timestamp the next kept frame may have."""
        return self._next_slot / self.fps

    def slot_of(self, t_s: float) -> int:
        """The grid slot a frame at `t_s` falls in."""
        return math.floor(t_s * self.fps + self._EPS)

    def offer(self, t_s: float) -> bool:
        """Whether the frame at `t_s` (seconds from the stream's start) is kept."""
        slot = self.slot_of(t_s)
        if slot < self._next_slot:
            return False
        self._next_slot = slot + 1
        return True

    def reset(self) -> None:
        self._next_slot = 0

    def resume_at(self, slot: int) -> None:
        """Go on as a sampler that kept its last frame in the slot before `slot` (a decode that
        starts part way: VideoFileReader's seek)."""
        self._next_slot = slot


# Slots of first timestamps the skipper keeps before forgetting those the output has passed.
_SKIPPER_SLOTS_KEPT = 256


class UnsampledFrameSkipper:
    """Which packets the decoder may drop undecoded because the sampler would not keep their frame.

    Frames leave the decoder in presentation order, so the sampler keeps, in each grid slot, the
    frame with the smallest presentation time. A packet whose time shares its slot with an
    earlier-presented packet already read is therefore certain to be dropped by the sampler;
    for those FFmpeg may skip decoding when they are non-reference frames (`skip_frame` NONREF:
    no other frame is predicted from them, so every other frame decodes to the same pixels).
    At 1 fps of 30 fps H.264 that leaves about half the frames undecoded, and the sampled
    frames are exactly those of decoding everything. The earliest packet seen in a slot is never
    skipped, nor is anything before the first frame fixes the time origin, nor anything once a
    packet without a timestamp or a frame out of presentation order shows up (then skipping
    stops for the rest of the file).
    """

    def __init__(self, sampler: TimeSampler, time_base: Fraction | None, origin: float | None = None) -> None:
        self._sampler = sampler
        self._time_base = time_base
        self._origin: float | None = origin  # known already where decoding starts part way
        self._unplaced: list[int] = []  # pts read before the origin was known
        self._first_pts: dict[int, int] = {}  # slot -> smallest pts read in it
        self._last_out: float | None = None
        self._latest_pts: int | None = None  # of every frame read, decoded or not
        self.enabled = time_base is not None

    def may_skip(self, packet: av.Packet) -> bool:
        """Record `packet` and say whether its frame may go undecoded (if it is non-reference)."""
        if packet.size == 0 or packet.is_discard or packet.is_corrupt:
            return False
        if packet.pts is not None and (self._latest_pts is None or packet.pts > self._latest_pts):
            self._latest_pts = packet.pts
        if not self.enabled:
            return False
        if packet.pts is None:
            self.enabled = False
            return False
        if self._origin is None:
            self._unplaced.append(packet.pts)
            return False
        return self._place(packet.pts)

    def frame_out(self, t: float | None) -> None:
        """Note a decoded frame's own time: the first fixes the origin, disorder stops skipping."""
        if t is None or (self._last_out is not None and t < self._last_out):
            self.enabled = False
            return
        self._last_out = t
        if self._origin is None:
            self._origin = t
            for pts in self._unplaced:
                self._place(pts)
            self._unplaced.clear()
        elif len(self._first_pts) > _SKIPPER_SLOTS_KEPT:
            # Slots the output has passed: a late packet of one is just decoded (never wrongly skipped).
            current = self._sampler.slot_of(t - self._origin)
            self._first_pts = {k: v for k, v in self._first_pts.items() if k >= current - 1}

    def last_position_s(self) -> float | None:
        """The latest frame read, in seconds from the first decoded one (None before that).

        What decoding everything would end on: a skipped frame can be the file's last.
        """
        if self._origin is None or self._latest_pts is None or self._time_base is None:
            return None
        return self._seconds(self._latest_pts) - self._origin

    def _place(self, pts: int) -> bool:
        """Record `pts` in its slot; True when an earlier-presented packet is already there."""
        slot = self._sampler.slot_of(self._seconds(pts) - self._origin)
        first = self._first_pts.get(slot)
        if first is None or pts < first:
            self._first_pts[slot] = pts
            return False
        return pts > first

    def _seconds(self, pts: int) -> float:
        # The expression of PyAV's Frame.time, so a packet and its frame land in the same slot.
        return float(pts) * self._time_base.numerator / self._time_base.denominator


def probe_video(source: Source) -> VideoInfo:
    """Open `source` (a path or the bytes of a file), read its header, describe its video."""
    container = _open_container(source)
    try:
        return _video_info(_video_stream(container, _source_name(source)), container)
    finally:
        container.close()


class VideoFileReader:
    """Decodes a whole file or blob once, yielding the frames sampled at `fps`.

    `info` is read when the reader is made (so a bad source fails here, before any work);
    each iteration opens the source afresh. `frames_decoded` (frames read from the file, those
    left undecoded because sampling drops them included) and `position_s` follow the decoder
    for progress reports. A decode error, or decoding that ends well before the
    recorded duration, raises `VideoDecodeError` after the frames decoded so far.
    """

    def __init__(self, source: Source, fps: float = 1.0) -> None:
        self._source = source
        self.name = _source_name(source)
        self.fps = fps
        TimeSampler(fps)  # validates fps now rather than at the first iteration
        self.info = probe_video(source)
        self.frames_decoded = 0
        self.position_s = 0.0  # time of the last decoded frame, from the first one

    def __iter__(self) -> Iterator[SampledFrame]:
        return self.frames()

    def frames(self, first: int = 0, seek: bool = False) -> Iterator[SampledFrame]:
        """The sampled frames from the one of index `first` on; those before are decoded as far
        as sampling needs (and counted) but neither converted nor yielded: where a resumed ingest
        or a segment (stream/segments.py) starts.

        seek: start decoding at the keyframe before frame `first` (`seek_point`), not at the
        file's start: the same frames, times and counts, for the decoding of the part before
        the keyframe. Where the file does not allow it (no timestamps, a packet FFmpeg marks
        corrupt, a seek that lands elsewhere) it decodes from the start as without.
        """
        point = self.seek_point(first) if seek and first > 0 else None
        if point is not None:
            container = _open_container(self._source)
            try:
                yield from self._decode(container, first, point)
                return
            except _SeekMissed:
                pass
            finally:
                container.close()
        container = _open_container(self._source)
        try:
            yield from self._decode(container, first)
        finally:
            container.close()

    def seek_point(self, first: int) -> SeekPoint | None:
        """Where decoding may start for sampled frame `first`, from the file's packets alone (read,
        not decoded) and its first frame; None where it cannot be known exactly."""
        container = _open_container(self._source)
        try:
            stream = _video_stream(container, self.name)
            time_base = stream.time_base
            codec = stream.codec_context
            head = None  # the first decoded frame: the origin of times, and the size
            packets: list[tuple[int, bool]] = []  # (pts, keyframe), decode order
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                if packet.pts is None or packet.is_corrupt or packet.is_discard:
                    return None
                packets.append((packet.pts, packet.is_keyframe))
                if head is None:
                    head = next(iter(codec.decode(packet)), None)
            if time_base is None or head is None or head.pts is None or head.time is None:
                return None
        except av.error.FFmpegError:
            return None
        finally:
            container.close()
        origin = float(head.time)
        sampler = TimeSampler(self.fps)
        target: int | None = None
        kept = 0
        for pts in sorted(p for p, _ in packets):
            position = float(pts) * time_base.numerator / time_base.denominator - origin
            if position < 0:
                return None  # a frame before the first decoded one: not what decoding would do
            if sampler.offer(position):
                if kept == first:
                    target = pts
                    break
                kept += 1
        if target is None:
            return None  # the file has no frame `first`: decoding from the start says so
        keyframes = [i for i, (pts, key) in enumerate(packets) if key and pts <= target]
        if not keyframes:
            return None
        at = keyframes[-1]
        slot = sampler.slot_of(float(target) * time_base.numerator / time_base.denominator - origin)
        return SeekPoint(packets[at][0], target, slot, at, origin, (head.width, head.height))

    def _decode(
        self, container: av.container.InputContainer, first: int, seek: SeekPoint | None = None
    ) -> Iterator[SampledFrame]:
        stream = _video_stream(container, self.name)
        # Frame threads decode ahead on another core (archive ingest's decode stage: BENCHMARKS.md).
        stream.thread_type = "AUTO"
        codec = stream.codec_context
        sampler = TimeSampler(self.fps)
        skipper = UnsampledFrameSkipper(sampler, stream.time_base, None if seek is None else seek.origin)
        self.frames_decoded, self.position_s = 0, 0.0
        origin: float | None = None  # the first frame's own time: pts_s counts from it
        size: tuple[int, int] | None = None  # (width, height) of the first kept frame
        kept = 0
        if seek is not None:
            container.seek(seek.keyframe_pts, stream=stream, backward=True, any_frame=False)
            origin, size, kept = seek.origin, seek.size, first
            sampler.resume_at(seek.next_slot)
            self.frames_decoded = seek.frames_before
        started = seek is None
        try:
            for packet in container.demux(stream):
                if not started and packet.size > 0:
                    if packet.pts != seek.keyframe_pts:  # type: ignore[union-attr]
                        raise _SeekMissed
                    started = True
                # Counted as read, decoded or skipped: the same count as decoding every frame.
                self.frames_decoded += int(packet.size > 0 and not packet.is_discard)
                # Frame threads copy skip_frame with each packet they take: per-packet is exact.
                codec.skip_frame = "NONREF" if skipper.may_skip(packet) else "DEFAULT"
                for frame in codec.decode(packet):
                    skipper.frame_out(frame.time)
                    if seek is not None and kept == first:
                        if frame.pts is not None and frame.pts < seek.target_pts:
                            continue  # before the target: a front-to-back decode's sampler took none
                        if frame.pts != seek.target_pts:
                            raise _SeekMissed
                    t = self._frame_time(frame.time, origin)
                    origin = t if origin is None else origin
                    self.position_s = t - origin
                    if sampler.offer(self.position_s):
                        # Colour conversion costs a third of the decoding again: kept frames only.
                        # A video whose frame size changes part way (a stream spliced from two) is
                        # scaled to its first frame's size: one token grid for the whole stream.
                        size = size or (frame.width, frame.height)
                        if kept >= first:
                            image = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                            yield SampledFrame(kept, self.position_s, image)
                        kept += 1
            self.position_s = max(self.position_s, skipper.last_position_s() or 0.0)
        except av.error.FFmpegError as e:
            raise VideoDecodeError(
                f"truncated or corrupt: decode error at {self._where()} in {self.name}: {_ffmpeg_reason(e)}"
            ) from e
        self._check_complete(stream)

    def _frame_time(self, t: float | None, origin: float | None) -> float:
        """A frame's own time in seconds; a frame without a timestamp follows the previous one."""
        if t is not None:
            return t
        if origin is None:
            return 0.0
        step = 1.0 / self.info.avg_fps if self.info.avg_fps else 0.0
        return origin + self.position_s + step

    def _where(self) -> str:
        total = self.info.duration_s
        of = f" of {total:.1f} s" if total is not None else ""
        return f"{self.position_s:.1f} s{of}"

    def _check_complete(self, stream: av.video.stream.VideoStream) -> None:
        """Raise if decoding ended well short of the duration the container recorded."""
        total = self.info.duration_s
        if total is None:
            return
        if self.frames_decoded == 0:
            raise VideoDecodeError(f"truncated: no frame could be decoded from {self.name} ({total:.1f} s)")
        interval = 1.0 / self.info.avg_fps if self.info.avg_fps else 0.0
        end = self.position_s + interval
        if stream.duration:
            slack = max(_SHORT_MIN_S, _SHORT_BY_FRAMES * interval)
        else:
            slack = max(_LOOSE_MIN_S, _LOOSE_FRACTION * total)
        if end < total - slack:
            raise VideoDecodeError(
                f"truncated: decoding stopped at {end:.1f} s of {total:.1f} s in {self.name}"
            )


def _source_name(source: Source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        return Path(name).name if isinstance(name, str) else "the uploaded file"
    return Path(source).name


def _as_file(source: Source) -> tuple[str | BinaryIO, int]:
    """What `av.open` takes for `source`, positioned at its start, and its size in bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), len(source)
    if hasattr(source, "read"):
        size = source.seek(0, io.SEEK_END)
        source.seek(0)
        return source, size
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no such video file: {path}")
    return str(path), path.stat().st_size


def _open_container(source: Source) -> av.container.InputContainer:
    """Open for reading, turning every FFmpeg refusal into a one-line `VideoDecodeError`."""
    name = _source_name(source)
    file, size = _as_file(source)
    if size == 0:
        raise VideoDecodeError(f"not a decodable video: {name} is empty (0 bytes)")
    try:
        # metadata_errors: a title that is not UTF-8 must not make the video unreadable
        return av.open(file, mode="r", metadata_errors="replace")
    except av.error.FFmpegError as e:
        cut = _mp4_cut_short(file, size)
        if cut is not None:
            raise VideoDecodeError(f"truncated: {cut} in {name}") from e
        raise VideoDecodeError(f"not a decodable video: {name}: {_ffmpeg_reason(e)}") from e


def _ffmpeg_reason(e: av.error.FFmpegError) -> str:
    return str(e.strerror or e).strip().splitlines()[0]


def _video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        found = ", ".join(f"{s.type} {_codec_name(s)}" for s in container.streams) or "none"
        raise VideoDecodeError(f"no video stream in {name} (streams: {found})")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # FFmpeg found a video stream but has no decoder for it
        raise VideoDecodeError(f"not a decodable video: FFmpeg has no decoder for the video stream in {name}")
    return stream


def _codec_name(stream: av.stream.Stream) -> str:
    ctx = stream.codec_context
    return ctx.name if ctx is not None else "(no decoder)"


def _video_info(stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> VideoInfo:
    duration: float | None = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    frames: int | None = stream.frames or None
    if frames is None and duration is not None and fps is not None:
        frames = round(duration * fps)
    ctx = stream.codec_context
    return VideoInfo(duration, ctx.width, ctx.height, fps, ctx.name, frames)


def _mp4_cut_short(file: str | BinaryIO, size: int) -> str | None:
    """Why an mp4/mov that FFmpeg refused looks cut short, or None when it does not.

    A file cut while being written (moov index at the end, the default) has no index, so
    FFmpeg says only "invalid data". Walking the top-level boxes tells the two apart.
    """
    if isinstance(file, str):
        with open(file, "rb") as f:
            return _walk_mp4_boxes(f, size)
    file.seek(0)
    return _walk_mp4_boxes(file, size)


def _walk_mp4_boxes(f: BinaryIO, size: int) -> str | None:
    head = f.read(8)
    if len(head) < 8 or head[4:8] != b"ftyp":
        return None  # not an ISO base media file: no opinion
    pos, kinds = 0, []
    while pos + 8 <= size:
        f.seek(pos)
        header = f.read(16)
        box_size, kind = struct.unpack(">I4s", header[:8])
        if box_size == 1 and len(header) == 16:
            box_size = struct.unpack(">Q", header[8:16])[0]
        elif box_size == 0:
            box_size = size - pos  # the last box runs to the end of the file
        if box_size < 8:
            return None  # garbage rather than a cut: no opinion
        name = kind.decode("latin-1")
        if pos + box_size > size:
            return f"mp4 box '{name}' needs {box_size} bytes at offset {pos} but the file ends at {size}"
        kinds.append(kind)
        pos += box_size
    if b"moov" not in kinds:
        return "mp4 has no index (moov box); the file was probably cut before it was finished"
    return None

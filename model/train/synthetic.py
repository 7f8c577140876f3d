"""Footage-like synthetic video, deterministic by seed, for tests, benchmarks and the demo model.

What real camera footage does to DiffFP, in a form cheap to make: scenes that hold still
for a while (a small object drifting, sensor noise), slow pans across a larger backdrop,
and hard cuts between scenes. A still scene should leave most tokens prunable once encoded
(the codec turns static noisy areas into skipped blocks); pans and cuts keep most tokens.

The scene schedule is data (`Scene` records), drawn lazily per scene index from the seed,
so any frame can be rendered on its own, in any order, with the same result. Overlays (any
object with `draw(frame, t_s)`) are drawn last, on top of everything: the hook for short
events ("needles") that questions will later ask about.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import io
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, Protocol

import av
import av.codec.codec
import av.container
import av.video.stream
import numpy as np

SceneKind = Literal["still", "pan"]
Colour = tuple[int, int, int]
Progress = Callable[[float], None]  # called with the seconds of video written so far

_LOW_RES = 4  # backdrops are drawn at 1/4 size and upsampled: smooth, and 16x cheaper
_STILL_SHARE = 0.6
_STILL_S = (5.0, 15.0)
_PAN_S = (3.0, 8.0)
_PAN_SPEED = (0.12, 0.35)  # frame widths per second
_DRIFT_SPEED = (0.01, 0.03)  # frame widths per second: a few pixels a second at 320 wide
_NOISE_PAD = 64  # pixels of extra noise field to each side: 4096 different windows
_ENCODERS = ("libx264", "libopenh264", "mpeg4")  # first one this PyAV build has wins


class Overlay(Protocol):
    """Anything drawn over the finished frame; outside its own time span it draws nothing."""

    def draw(self, frame: np.ndarray, t_s: float) -> None:
        """Draw onto `frame` ((H, W, 3) uint8, modified in place) as it looks at `t_s`."""
        ...


@dataclass(frozen=True)
class Drifter:
    """A small disc moving slowly across a still scene, bouncing off the frame's edges."""

    x: float  # centre at the scene's start, frame pixels
    y: float
    vx: float  # pixels per second
    vy: float
    radius: float
    colour: Colour


@dataclass(frozen=True)
class Scene:
    """One shot: a view onto its own backdrop, fixed ('still') or moving ('pan')."""

    start_s: float
    duration_s: float
    kind: SceneKind
    backdrop_seed: int
    backdrop_hw: tuple[int, int]  # backdrop size in pixels, at least the frame's
    view_xy: tuple[float, float]  # top-left corner of the view on the backdrop at start_s
    pan_xy: tuple[float, float]  # view velocity in pixels per second, (0, 0) when still
    drifter: Drifter | None = None

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True)
class BoxEvent:
    """A filled square shown from start_s for duration_s: the simplest overlay."""

    start_s: float
    duration_s: float
    x: int  # top-left corner, frame pixels
    y: int
    size: int
    colour: Colour

    def draw(self, frame: np.ndarray, t_s: float) -> None:
        if self.start_s <= t_s < self.start_s + self.duration_s:
            frame[self.y : self.y + self.size, self.x : self.x + self.size] = self.colour


def random_scene(seed: int, index: int, start_s: float, width: int, height: int) -> Scene:
    """Scene number `index` of the schedule of `seed`; depends on nothing else drawn before."""
    rng = np.random.default_rng([seed, index])
    kind: SceneKind = "still" if rng.random() < _STILL_SHARE else "pan"
    duration = float(rng.uniform(*(_STILL_S if kind == "still" else _PAN_S)))
    pan = (0.0, 0.0)
    if kind == "pan":
        speed = rng.uniform(*_PAN_SPEED) * width
        pan = (float(speed * rng.choice([-1, 1])), float(speed * rng.uniform(-0.25, 0.25)))
    bh = height + math.ceil(abs(pan[1]) * duration) + 2
    bw = width + math.ceil(abs(pan[0]) * duration) + 2
    # A pan starts at the end of the backdrop it moves away from.
    view = (float(bw - width - 1 if pan[0] < 0 else 0), float(bh - height - 1 if pan[1] < 0 else 0))
    drifter = _random_drifter(rng, width, height) if kind == "still" else None
    return Scene(start_s, duration, kind, int(rng.integers(2**31)), (bh, bw), view, pan, drifter)


def make_schedule(seed: int, seconds: float, width: int, height: int) -> list[Scene]:
    """The scenes of `seed` that cover [0, seconds): what `SyntheticFootage` plays by default."""
    scenes: list[Scene] = []
    while not scenes or scenes[-1].end_s < seconds:
        start = scenes[-1].end_s if scenes else 0.0
        scenes.append(random_scene(seed, len(scenes), start, width, height))
    return scenes


class SyntheticFootage:
    """Renders frame i of a scene schedule at `fps`, with sensor noise and overlays.

    scenes: an explicit schedule (contiguous from 0 s); None plays `random_scene` of `seed`
        for as long as frames are asked for.
    noise: standard deviation of the per-frame sensor noise, in 8-bit levels. At DiffFP's
        threshold of 0.1 any noise on raw frames keeps every token; it is the codec that
        turns still, noisy areas into exact copies. Once encoded (x264, crf 23), 1.0 leaves
        about a quarter to a third of still-scene tokens; 1.5 already keeps most of them.
    overlays: drawn in order over each finished frame.
    """

    def __init__(
        self,
        seed: int = 0,
        width: int = 320,
        height: int = 180,
        fps: float = 10.0,
        *,
        scenes: Sequence[Scene] | None = None,
        noise: float = 1.0,
        overlays: Sequence[Overlay] = (),
    ) -> None:
        if width < 16 or height < 16:
            raise ValueError(f"frame must be at least 16x16, got {width}x{height}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.seed, self.width, self.height, self.fps = seed, width, height, fps
        self.noise = noise
        self.overlays = list(overlays)
        self._fixed = scenes is not None
        self.scenes: list[Scene] = []
        self._starts: list[float] = []  # scene start times, for bisection
        for scene in scenes or ():
            self._add_scene(scene)
        self._backdrops: dict[int, np.ndarray] = {}  # scene index -> (bh, bw, 3) uint8, last two
        self._noise_field: np.ndarray | None = None  # (H + pad, W + pad, 1) int16, made on first use

    def frame_count(self, seconds: float) -> int:
        return round(seconds * self.fps)

    def scene_index_at(self, t_s: float) -> int:
        """The index of the scene showing at `t_s`, extending a random schedule as needed."""
        while not self._fixed and (not self.scenes or self.scenes[-1].end_s <= t_s):
            start = self.scenes[-1].end_s if self.scenes else 0.0
            self._add_scene(random_scene(self.seed, len(self.scenes), start, self.width, self.height))
        k = bisect.bisect_right(self._starts, t_s) - 1
        if k < 0 or t_s >= self.scenes[k].end_s:
            end = self.scenes[-1].end_s if self.scenes else 0.0
            raise ValueError(f"no scene at {t_s:.2f} s (the schedule covers 0 to {end:.2f} s)")
        return k

    def _add_scene(self, scene: Scene) -> None:
        expected_start = self.scenes[-1].end_s if self.scenes else 0.0
        if abs(scene.start_s - expected_start) > 1e-9:
            raise ValueError(
                f"scenes must be contiguous from 0 s: one starts at {scene.start_s} s, not {expected_start} s"
            )
        bh, bw = scene.backdrop_hw
        if bh < self.height or bw < self.width:
            raise ValueError(
                f"a scene's backdrop {bw}x{bh} is smaller than the frame {self.width}x{self.height}"
            )
        self.scenes.append(scene)
        self._starts.append(scene.start_s)

    def frame_at(self, i: int) -> np.ndarray:
        """Frame `i` (at i / fps seconds): (H, W, 3) uint8 RGB."""
        t = i / self.fps
        k = self.scene_index_at(t)
        scene, local = self.scenes[k], t - self.scenes[k].start_s
        frame = self._view(k, local)  # (H, W, 3) uint8, a fresh copy
        if scene.drifter is not None:
            _draw_drifter(frame, scene.drifter, local)
        if self.noise > 0:
            frame = self._add_noise(frame, i)
        for overlay in self.overlays:
            overlay.draw(frame, t)
        return frame

    def frames(self, seconds: float) -> Iterator[np.ndarray]:
        for i in range(self.frame_count(seconds)):
            yield self.frame_at(i)

    def write(
        self, path: str | Path, seconds: float, *, faststart: bool = False, progress: Progress | None = None
    ) -> Path:
        """Encode the first `seconds` to `path` (see `encode_video`)."""
        return encode_video(path, self.frames(seconds), self.fps, faststart=faststart, progress=progress)

    def _add_noise(self, frame: np.ndarray, i: int) -> np.ndarray:
        """Per-frame Gaussian sensor noise in luma (the same on all three channels).

        Drawing fresh normals per frame cost most of the render time; a window at a random
        offset into one larger field of rounded normals looks the same to a codec and to
        DiffFP (new noise at every pixel, every frame) at a fraction of the cost.
        """
        if self._noise_field is None:
            rng = np.random.default_rng([self.seed, 1])
            size = (self.height + _NOISE_PAD, self.width + _NOISE_PAD, 1)
            self._noise_field = np.rint(rng.standard_normal(size) * self.noise).astype(np.int16)
        dy, dx = np.random.default_rng([self.seed, 2, i]).integers(0, _NOISE_PAD, size=2)
        window = self._noise_field[dy : dy + self.height, dx : dx + self.width]  # (H, W, 1)
        out = frame.astype(np.int16)
        out += window
        return np.clip(out, 0, 255, out=out).astype(np.uint8)

    def _view(self, k: int, local_s: float) -> np.ndarray:
        scene = self.scenes[k]
        backdrop = self._backdrop(k)
        bh, bw = backdrop.shape[:2]
        x = min(max(round(scene.view_xy[0] + scene.pan_xy[0] * local_s), 0), bw - self.width)
        y = min(max(round(scene.view_xy[1] + scene.pan_xy[1] * local_s), 0), bh - self.height)
        return backdrop[y : y + self.height, x : x + self.width].copy()

    def _backdrop(self, k: int) -> np.ndarray:
        if k not in self._backdrops:
            scene = self.scenes[k]
            if len(self._backdrops) >= 2:  # frames are asked for in order, nearly always
                self._backdrops.pop(next(iter(self._backdrops)))
            self._backdrops[k] = draw_backdrop(scene.backdrop_seed, *scene.backdrop_hw)
        return self._backdrops[k]


def write_video(
    path: str | Path,
    seconds: float,
    fps: float = 10,
    width: int = 320,
    height: int = 180,
    seed: int = 0,
    progress: Progress | None = None,
) -> Path:
    """Write `seconds` of the footage of `seed` to an mp4 at `path`; returns the path."""
    return SyntheticFootage(seed, width, height, fps).write(path, seconds, progress=progress)


def write_once(path: Path, write: Callable[[Path], object]) -> Path:
    """`path`, made by `write` (given a path beside it) first if it is not there.

    The file appears whole or not at all: a run stopped while writing leaves only a partial-*
    file, which the next run writes over instead of reading a truncated video as the real one.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name("partial-" + path.name)
        write(partial)
        partial.replace(path)
    return path


def pick_encoder() -> str:
    """The best video encoder this PyAV build has: H.264 where it can, else MPEG-4 part 2."""
    for name in _ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:
            continue
        return name
    raise RuntimeError(f"PyAV has none of the encoders {_ENCODERS}")


def encode_video(
    path: str | Path,
    frames: Iterator[np.ndarray],
    fps: float,
    *,
    codec: str | None = None,
    faststart: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Encode (H, W, 3) uint8 RGB frames to a yuv420p video; `faststart` puts the mp4 index first.

    Sizes must be even (4:2:0 chroma). `progress` hears the seconds written after each frame.
    The same frames always give the same file (see `pinned_heap`).
    """
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with pinned_heap(), av.open(str(path), mode="w", options=options) as container:
        _encode_into(container, frames, fps, codec, progress)
    return path


def codec_round_trip(frames: np.ndarray, fps: float = 1.0, codec: str | None = None) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 as they come back from an mp4 of them at `fps`, encoded and decoded.

    Codec artefacts (blocking, 4:2:0 chroma, still noise flattened into copies), made in memory
    in tens of milliseconds for a few dozen small frames, with `encode_video`'s encoder and
    settings: the frames a reader decodes from the file `encode_video` writes of them. The same
    frames always come back the same, so that training runs reproduce. Decoding runs on one
    thread: frame threads cost ten times more than they save on clips this short.
    """
    buffer = io.BytesIO()
    with pinned_heap(), av.open(buffer, mode="w", format="mp4") as container:
        _encode_into(container, iter(frames), fps, codec, None)
    buffer.seek(0)
    with av.open(buffer) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        out = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    if out.shape != frames.shape:
        raise RuntimeError(f"round trip gave {out.shape[0]} frames of {frames.shape[0]}")
    return out


# glibc's mallopt option that fills each allocation with the complement of a byte (and each
# freed block with the byte), as the MALLOC_PERTURB_ variable does from a process's start.
_M_PERTURB = -6
_HEAP_FILL = 0x5A
_heap_lock = threading.Lock()
_heap_users = 0


def _mallopt() -> Callable[[int, int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): no such option
        return None


_MALLOPT = _mallopt()


@contextmanager
def pinned_heap() -> Iterator[None]:
    """While inside, every new heap allocation of the process starts filled with one fixed byte.

    x264 with B-frames and its macroblock tree (its defaults) reads memory it never wrote: the
    same frames encoded twice in one process came back different for about one clip in four,
    and across processes they followed glibc's MALLOC_PERTURB_ fill byte. With what it reads
    pinned, its output depends on the frames alone. Process-wide (other threads' allocations
    meanwhile are filled too: a cost, never a change); on a C library without glibc's
    M_PERTURB it pins nothing.
    """
    global _heap_users
    if _MALLOPT is None:
        yield
        return
    with _heap_lock:
        if _heap_users == 0:
            _MALLOPT(_M_PERTURB, _HEAP_FILL)
        _heap_users += 1
    try:
        yield
    finally:
        with _heap_lock:
            _heap_users -= 1
            if _heap_users == 0:  # back to the process's own setting
                _MALLOPT(_M_PERTURB, int(os.environ.get("MALLOC_PERTURB_") or 0) & 0xFF)


def _encode_into(
    container: av.container.OutputContainer,
    frames: Iterator[np.ndarray],
    fps: float,
    codec: str | None,
    progress: Progress | None,
) -> None:
    rate = Fraction(fps).limit_denominator(1001)
    stream = None
    for i, image in enumerate(frames):
        if stream is None:
            stream = _add_video_stream(container, codec or pick_encoder(), rate, image.shape)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i, 1 / rate
        container.mux(stream.encode(frame))
        if progress is not None:
            progress((i + 1) / fps)
    if stream is None:
        raise ValueError("no frames to encode")
    container.mux(stream.encode(None))


def _add_video_stream(
    container: av.container.OutputContainer, codec: str, rate: Fraction, shape: tuple[int, ...]
) -> av.video.stream.VideoStream:
    height, width = shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"frame size must be even for yuv420p, got {width}x{height}")
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = 1 / rate
    if codec == "libx264":
        stream.options = {"preset": "veryfast", "crf": "23"}
    elif codec == "mpeg4":
        stream.bit_rate = 8 * width * height * int(rate)  # about 8 bits a pixel a second
    return stream


def draw_backdrop(seed: int, height: int, width: int) -> np.ndarray:
    """A procedural landscape, (height, width, 3) uint8: sky, hills, blocks, texture.

    Drawn at 1/4 size and upsampled linearly: detail everywhere (so a pan changes every
    token) without hard noise, at the cost of a few milliseconds per scene.
    """
    rng = np.random.default_rng([seed, 7])
    lh, lw = height // _LOW_RES + 2, width // _LOW_RES + 2
    sky, ground = rng.uniform(40, 220, size=(2, 3))
    rows = np.linspace(0.0, 1.0, lh)[:, None, None]  # (lh, 1, 1)
    img = np.broadcast_to(sky * (1 - rows) + sky * 0.6 * rows, (lh, lw, 3)).copy()  # (lh, lw, 3)
    horizon = _horizon(rng, lh, lw)  # (lw,) row where the ground starts, per column
    below = np.arange(lh)[:, None] >= horizon[None, :]  # (lh, lw)
    img[below] = ground
    _draw_blocks(img, rng, horizon)
    img *= _texture(rng, lh, lw)[..., None]  # brightness varies smoothly, so pans show
    return np.clip(_upsample(img, height, width), 0, 255).astype(np.uint8)


def _horizon(rng: np.random.Generator, lh: int, lw: int) -> np.ndarray:
    x = np.arange(lw)
    base = rng.uniform(0.35, 0.65) * lh
    waves = sum(
        rng.uniform(0.02, 0.08) * lh * np.sin(x / rng.uniform(4, 40) + rng.uniform(0, 6.3)) for _ in range(3)
    )
    return np.clip(base + waves, 1, lh - 1).astype(np.int64)


def _draw_blocks(img: np.ndarray, rng: np.random.Generator, horizon: np.ndarray) -> None:
    """Buildings and boxes standing on the ground line: edges for the encoder to track."""
    lh, lw = img.shape[:2]
    for _ in range(max(3, lw // 12)):
        w = int(rng.integers(2, max(3, lw // 8)))
        x = int(rng.integers(0, max(1, lw - w)))
        top_of_ground = int(horizon[x : x + w].min())
        h = int(rng.integers(2, max(3, top_of_ground)))
        img[max(0, top_of_ground - h) : top_of_ground + 1, x : x + w] = rng.uniform(20, 235, size=3)


def _texture(rng: np.random.Generator, lh: int, lw: int) -> np.ndarray:
    """Smooth value noise in [0.7, 1.15]: (lh, lw) float."""
    coarse = rng.uniform(0.7, 1.15, size=(lh // 6 + 2, lw // 6 + 2))
    fine = rng.uniform(-0.06, 0.06, size=(lh, lw))
    return _upsample(coarse[..., None], lh, lw)[..., 0] + fine


def _upsample(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (h, w, C) float to (height, width, C), pixel centres aligned."""
    h, w = img.shape[:2]
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.minimum(ys.astype(np.int64), h - 2), np.minimum(xs.astype(np.int64), w - 2)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x0 + 1] * wx  # (height, width, C)
    bottom = img[y0 + 1][:, x0] * (1 - wx) + img[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _random_drifter(rng: np.random.Generator, width: int, height: int) -> Drifter:
    radius = float(rng.uniform(0.04, 0.08) * height)
    speed = rng.uniform(*_DRIFT_SPEED) * width
    angle = rng.uniform(0, 2 * math.pi)
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    x, y = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    return Drifter(float(x), float(y), speed * math.cos(angle), speed * math.sin(angle), radius, colour)


def _bounce(p: float, lo: float, hi: float) -> float:
    """Position p folded into [lo, hi] as if reflecting off both ends."""
    span = hi - lo
    if span <= 0:
        return lo
    q = (p - lo) % (2 * span)
    return lo + (q if q <= span else 2 * span - q)


def _draw_drifter(frame: np.ndarray, d: Drifter, local_s: float) -> None:
    h, w = frame.shape[:2]
    cx = _bounce(d.x + d.vx * local_s, d.radius, w - d.radius)
    cy = _bounce(d.y + d.vy * local_s, d.radius, h - d.radius)
    x0, x1 = max(0, int(cx - d.radius)), min(w, int(cx + d.radius) + 2)
    y0, y1 = max(0, int(cy - d.radius)), min(h, int(cy + d.radius) + 2)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= d.radius**2  # (y1 - y0, x1 - x0)
    frame[y0:y1, x0:x1][inside] = d.colour

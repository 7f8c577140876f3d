"""Synthetic footage: deterministic, scene-structured, encodable, with an overlay hook."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from longwatch.model.train.needles import make_needle_video, seed_for
from longwatch.model.train.synthetic import (
    BoxEvent,
    Drifter,
    Scene,
    SyntheticFootage,
    codec_round_trip,
    encode_video,
    make_schedule,
    pick_encoder,
    random_scene,
    write_once,
    write_video,
)
from longwatch.stream.decode import VideoFileReader, probe_video


def changed(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels that differ by more than noise between two frames."""
    return float((np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1) > 8).mean())


def test_same_seed_same_frames_in_any_order() -> None:
    a, b = SyntheticFootage(seed=4), SyntheticFootage(seed=4)
    late_first = [b.frame_at(i) for i in (123, 7, 0)]
    in_order = [a.frame_at(i) for i in (0, 7, 123)]
    assert all(np.array_equal(x, y) for x, y in zip(in_order, late_first[::-1], strict=True))
    assert not np.array_equal(a.frame_at(7), SyntheticFootage(seed=5).frame_at(7))


def test_frames_are_rgb_uint8_of_the_asked_size() -> None:
    frame = SyntheticFootage(seed=1, width=128, height=72).frame_at(3)
    assert frame.shape == (72, 128, 3) and frame.dtype == np.uint8
    assert frame.std() > 10  # a picture, not a flat field


def test_schedule_is_contiguous_and_mixes_stills_and_pans() -> None:
    scenes = make_schedule(seed=0, seconds=180, width=320, height=180)
    assert scenes[0].start_s == 0 and scenes[-1].end_s >= 180
    assert all(b.start_s == a.end_s for a, b in itertools.pairwise(scenes))
    assert {s.kind for s in scenes} == {"still", "pan"}
    assert all((s.kind == "pan") == (s.pan_xy != (0.0, 0.0)) for s in scenes)
    assert all(s.drifter is not None for s in scenes if s.kind == "still")
    assert scenes[3] == random_scene(0, 3, scenes[3].start_s, 320, 180)  # each scene on its own


def test_lazy_schedule_equals_the_precomputed_one() -> None:
    footage = SyntheticFootage(seed=0)
    footage.frame_at(600)  # 60 s
    assert footage.scenes == make_schedule(0, footage.scenes[-1].end_s - 1e-9, 320, 180)


def test_still_scene_changes_little_pan_and_cut_change_much() -> None:
    footage = SyntheticFootage(seed=0, noise=0.0)
    scenes = make_schedule(0, 120, 320, 180)
    still = next(s for s in scenes if s.kind == "still" and s.duration_s > 3)
    pan = next(s for s in scenes if s.kind == "pan" and s.duration_s > 2)

    def frames_of(scene: Scene, offset_s: float) -> tuple[np.ndarray, np.ndarray]:
        i = int(np.ceil((scene.start_s + 0.5) * footage.fps))
        return footage.frame_at(i), footage.frame_at(i + round(offset_s * footage.fps))

    assert 0 < changed(*frames_of(still, 1.0)) < 0.05  # only the drifting disc moves
    assert changed(*frames_of(pan, 1.0)) > 0.3
    cut = round(scenes[1].start_s * footage.fps + 0.5)
    assert changed(footage.frame_at(cut - 1), footage.frame_at(cut)) > 0.5


def test_noise_changes_every_frame_a_little() -> None:
    quiet, noisy = SyntheticFootage(seed=0, noise=0.0), SyntheticFootage(seed=0, noise=1.0)
    still = next(s for s in make_schedule(0, 120, 320, 180) if s.kind == "still")
    i = int(np.ceil(still.start_s * 10)) + 1
    diff = np.abs(noisy.frame_at(i).astype(np.int16) - quiet.frame_at(i).astype(np.int16))
    assert 0.3 < float((diff > 0).mean()) < 0.9 and int(diff.max()) <= 6


def test_explicit_schedule_and_overlay_hook() -> None:
    drifter = Drifter(x=20, y=20, vx=0, vy=0, radius=5, colour=(255, 0, 0))
    scenes = [
        Scene(0.0, 2.0, "still", 11, (64, 96), (0, 0), (0, 0), drifter),
        Scene(2.0, 2.0, "pan", 12, (64, 200), (0, 0), (20, 0)),
    ]
    box = BoxEvent(start_s=1.0, duration_s=0.5, x=40, y=10, size=8, colour=(0, 255, 0))
    footage = SyntheticFootage(seed=0, width=96, height=64, fps=10, scenes=scenes, noise=0.0, overlays=[box])
    assert footage.frame_at(5)[14, 44].tolist() != [0, 255, 0]
    assert footage.frame_at(10)[14, 44].tolist() == [0, 255, 0]  # shown from 1.0 s ...
    assert footage.frame_at(15)[14, 44].tolist() != [0, 255, 0]  # ... for 0.5 s
    assert footage.frame_at(0)[20, 20].tolist() == [255, 0, 0]
    assert footage.frame_at(39).shape == (64, 96, 3)
    with pytest.raises(ValueError, match="no scene at 4.00 s"):
        footage.frame_at(40)


def test_write_video_round_trip(tmp_path: Path) -> None:
    calls: list[float] = []
    path = write_video(tmp_path / "clip.mp4", 3, fps=10, width=160, height=96, seed=2, progress=calls.append)
    info = probe_video(path)
    assert (info.width, info.height, info.avg_fps, info.frames_estimate) == (160, 96, 10.0, 30)
    assert info.codec == {"libx264": "h264", "libopenh264": "h264", "mpeg4": "mpeg4"}[pick_encoder()]
    assert len(calls) == 30 and calls[0] == pytest.approx(0.1) and calls[-1] == pytest.approx(3.0)
    frames = list(VideoFileReader(path, fps=10))
    original = SyntheticFootage(seed=2, width=160, height=96, fps=10).frame_at(17).astype(np.float32)
    assert len(frames) == 30
    assert np.abs(frames[17].image.astype(np.float32) - original).mean() < 6


def test_codec_round_trip_gives_the_frames_a_reader_decodes_from_the_written_file(tmp_path: Path) -> None:
    for fps in (1, 10):
        footage = SyntheticFootage(seed=5, width=56, height=56, fps=fps)
        frames = np.stack([footage.frame_at(i) for i in range(48)])
        trip = codec_round_trip(frames, fps)
        assert trip.shape == frames.shape and trip.dtype == np.uint8
        assert 0.5 < np.abs(trip.astype(np.float32) - frames).mean() < 6  # lossy, the same picture
        # Training clips go through it: what the service would decode from such a file, exactly.
        path = encode_video(tmp_path / f"same-{fps}.mp4", iter(frames), fps=fps)
        read = np.stack([f.image for f in VideoFileReader(path, fps=fps)])
        assert np.array_equal(trip, read)


# Four clips of 10 fps footage, each round-tripped three times in one process between other
# allocations, and a 1 fps video written to a file; prints their hashes.
ROUND_TRIPS = """
import hashlib, sys, numpy as np
from longwatch.model.train.synthetic import SyntheticFootage, codec_round_trip, encode_video
out = []
for seed in range(1001, 1005):
    footage = SyntheticFootage(seed=seed, width=56, height=56, fps=10)
    video = np.stack([footage.frame_at(i) for i in range(80)])
    for k in range(3):
        junk = [np.ones(1000 + 97 * j) for j in range(40 * k)]
        out.append(hashlib.md5(codec_round_trip(video, 10).tobytes()).hexdigest())
frames = (SyntheticFootage(seed=7, width=56, height=56, fps=1).frame_at(i) for i in range(120))
path = encode_video(sys.argv[1], frames, fps=1)
out.append(hashlib.md5(path.read_bytes()).hexdigest())
print(*out)
"""


def test_encoding_does_not_depend_on_what_memory_held(tmp_path: Path) -> None:
    # x264's defaults (B-frames, macroblock tree) read memory they never wrote: unpinned, about
    # one such clip in four came back different within a process, and the output followed
    # glibc's MALLOC_PERTURB_ fill byte across processes.
    runs = []
    for fill in ("0", "77", "165"):
        env = {**os.environ, "MALLOC_PERTURB_": fill}
        args = [sys.executable, "-c", ROUND_TRIPS, str(tmp_path / f"{fill}.mp4")]
        run = subprocess.run(args, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        runs.append(run.stdout.split())
    assert runs[0] == runs[1] == runs[2]
    trips = runs[0][:-1]
    assert all(len(set(trips[i : i + 3])) == 1 for i in range(0, 12, 3))  # each clip alike, every time
    assert len(set(trips)) == 4  # and the clips are not all one


def test_write_video_rejects_odd_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", 1, width=161, height=96)


def test_explicit_schedule_is_checked() -> None:
    ok = Scene(0.0, 2.0, "still", 1, (64, 96), (0, 0), (0, 0))
    gap = Scene(3.0, 2.0, "still", 1, (64, 96), (0, 0), (0, 0))
    with pytest.raises(ValueError, match="contiguous"):
        SyntheticFootage(width=96, height=64, scenes=[ok, gap])
    with pytest.raises(ValueError, match="smaller than the frame"):
        SyntheticFootage(width=128, height=64, scenes=[ok])


def test_bad_footage_arguments() -> None:
    with pytest.raises(ValueError, match="at least 16x16"):
        SyntheticFootage(width=8)
    with pytest.raises(ValueError, match="fps"):
        SyntheticFootage(fps=0)


def test_write_once_leaves_a_whole_file_or_none(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "clip.mp4"

    def stopped(partial: Path) -> None:
        partial.write_bytes(b"half a vid")
        raise KeyboardInterrupt  # a run stopped while writing

    with pytest.raises(KeyboardInterrupt):
        write_once(path, stopped)
    assert not path.exists()  # the next run does not read the truncated file as the video
    assert write_once(path, lambda p: write_video(p, 2, fps=2, width=64, height=48)) == path
    assert probe_video(path).frames_estimate == 4
    # Once there, it is read, not written again.
    assert write_once(path, stopped) == path


def test_needle_videos_are_named_by_what_is_in_them() -> None:
    seed = seed_for("eval", 3)
    at_start, at_end = make_needle_video(seed, 60, 0.0), make_needle_video(seed, 60, 1.0)
    # One seed at two depths (two grid plans) is two videos, so a cache keeps them apart.
    assert at_start.file_name != at_end.file_name
    assert at_start.file_name == make_needle_video(seed, 60, 0.0).file_name
    assert make_needle_video(seed, 60, 0.0, width=64, height=64).file_name != at_start.file_name

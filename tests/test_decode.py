"""Decoding and time sampling: generated and real footage, and every kind of bad input."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from footage import cut_at_packet, cut_in_half, real_clip, write_audio_only

from longwatch.model.train.synthetic import SyntheticFootage
from longwatch.stream.decode import (
    SampledFrame,
    TimeSampler,
    VideoDecodeError,
    VideoFileReader,
    probe_video,
)

FPS = 10


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 20 s generated video, as written (moov last) and with faststart, 10 fps."""
    root = tmp_path_factory.mktemp("decode")
    footage = SyntheticFootage(seed=3, width=160, height=96, fps=FPS)
    return {
        "plain": footage.write(root / "plain.mp4", 20),
        "faststart": footage.write(root / "faststart.mp4", 20, faststart=True),
    }


# -- TimeSampler ---------------------------------------------------------------------------


def kept(sampler: TimeSampler, times: list[float]) -> list[float]:
    return [t for t in times if sampler.offer(t)]


def test_sampler_keeps_first_frame_at_or_after_each_grid_point() -> None:
    times = [i / 30 for i in range(90)]  # 3 s at 30 fps
    assert kept(TimeSampler(1.0), times) == [0.0, 1.0, 2.0]
    assert kept(TimeSampler(2.0), [i / 25 for i in range(50)]) == pytest.approx([0.0, 0.52, 1.0, 1.52])


def test_sampler_counts_float_timestamps_on_the_grid_as_on_it() -> None:
    # 0.1 * 3 is 0.30000000000000004 and 3 / 10 * 10 is 2.9999999999999996 in floats
    times = [k * 0.1 for k in range(100)]
    assert len(kept(TimeSampler(10.0), times)) == 100


def test_sampler_keeps_one_frame_when_timestamps_skip_slots() -> None:
    sampler = TimeSampler(1.0)
    assert kept(sampler, [0.0, 0.4, 3.7, 3.8, 4.2, 9.0, 9.5]) == [0.0, 3.7, 4.2, 9.0]
    assert sampler.next_time_s == 10.0


def test_sampler_never_keeps_two_frames_per_slot_nor_goes_back() -> None:
    sampler = TimeSampler(1.0)
    assert kept(sampler, [0.0, 0.0, 1.2, 1.1, 0.5, 1.9, 2.0, 2.0]) == [0.0, 1.2, 2.0]
    sampler.reset()
    assert sampler.offer(0.5)


def test_sampler_works_online_like_a_live_stream() -> None:
    batch, live = TimeSampler(3.0), TimeSampler(3.0)
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.01, 0.5, size=200)).tolist()
    assert kept(batch, times) == [t for t in times if live.offer(t)]


@pytest.mark.parametrize("fps", [0, -1, float("nan"), float("inf")])
def test_sampler_rejects_bad_fps(fps: float) -> None:
    with pytest.raises(ValueError, match="fps"):
        TimeSampler(fps)


# -- reading generated and real footage ---------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "faststart"])
def test_one_fps_of_a_generated_video_gives_each_second(videos: dict[str, Path], kind: str) -> None:
    reader = VideoFileReader(videos[kind], fps=1.0)
    frames = list(reader)
    assert [f.index for f in frames] == list(range(20))
    assert np.allclose([f.pts_s for f in frames], range(20), atol=1 / FPS)
    assert all(f.pts_s >= f.index for f in frames)  # at or after the grid point
    assert all(isinstance(f, SampledFrame) and f.image.shape == (96, 160, 3) for f in frames)
    assert frames[0].image.dtype == np.uint8
    assert reader.frames_decoded == 20 * FPS
    assert reader.position_s == pytest.approx(20 - 1 / FPS)


def test_bytes_and_path_give_the_same_frames(videos: dict[str, Path]) -> None:
    from_path = list(VideoFileReader(videos["plain"], fps=2.0))
    from_bytes = list(VideoFileReader(videos["plain"].read_bytes(), fps=2.0))
    assert [f.pts_s for f in from_path] == [f.pts_s for f in from_bytes]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(from_path, from_bytes, strict=True))


def test_file_object_source_is_read_from_its_start_each_time(videos: dict[str, Path]) -> None:
    blob = io.BytesIO(videos["plain"].read_bytes())
    blob.seek(1234)  # wherever the caller left it
    reader = VideoFileReader(blob, fps=1.0)
    assert reader.info.duration_s == pytest.approx(20.0, abs=0.2)
    assert [len(list(reader)), len(list(reader))] == [20, 20]
    with open(videos["plain"], "rb") as f:
        assert VideoFileReader(f).name == "plain.mp4"
    expect_error(io.BytesIO(b"not a video at all" * 10), "^not a decodable video: the uploaded file: ")


def test_decoded_frames_look_like_the_generated_ones(videos: dict[str, Path]) -> None:
    footage = SyntheticFootage(seed=3, width=160, height=96, fps=FPS)
    for frame in VideoFileReader(videos["plain"], fps=0.5):
        original = footage.frame_at(round(frame.pts_s * FPS)).astype(np.float32)
        assert np.abs(frame.image.astype(np.float32) - original).mean() < 6  # lossy, not wrong


def test_reader_iterates_again_from_the_start(videos: dict[str, Path]) -> None:
    reader = VideoFileReader(videos["plain"], fps=0.25)
    first, second = [f.pts_s for f in reader], [f.pts_s for f in reader]
    assert first == second and len(first) == 5


def test_probe_of_generated_video(videos: dict[str, Path]) -> None:
    info = probe_video(videos["plain"])
    assert (info.width, info.height, info.avg_fps) == (160, 96, FPS)
    assert info.codec in ("h264", "mpeg4")
    assert info.duration_s == pytest.approx(20.0, abs=0.2)
    assert info.frames_estimate == 200


def test_probe_of_real_clips() -> None:
    bikes = probe_video(real_clip("bikes.mp4"))
    assert (bikes.width, bikes.height, bikes.avg_fps, bikes.codec) == (640, 272, 25.0, "h264")
    assert bikes.duration_s == pytest.approx(10.0) and bikes.frames_estimate == 250
    carphone = probe_video(real_clip("carphone_pristine.mp4"))
    assert carphone.avg_fps == pytest.approx(30000 / 1001)


@pytest.mark.parametrize(("name", "fps"), [("carphone_pristine.mp4", 2.0), ("bikes.mp4", 3.0)])
def test_real_clip_sampling_follows_presentation_time(name: str, fps: float) -> None:
    reader = VideoFileReader(real_clip(name), fps=fps)
    frames = list(reader)
    interval = 1 / reader.info.avg_fps
    times = np.array([f.pts_s for f in frames])
    grid = np.arange(len(frames)) / fps
    assert np.all(times >= grid - 1e-6) and np.all(times < grid + interval)
    last_frame_s = reader.info.duration_s - interval
    assert len(frames) == int(np.floor(last_frame_s * fps + 1e-6)) + 1  # grid points up to it
    assert reader.frames_decoded == reader.info.frames_estimate
    assert frames[0].image.shape == (reader.info.height, reader.info.width, 3)


# -- bad inputs ------------------------------------------------------------------------------


def expect_error(source: Path | bytes, match: str) -> VideoDecodeError:
    """The error must come at probe/open time or during iteration, and be one line."""
    with pytest.raises(VideoDecodeError, match=match) as info:
        list(VideoFileReader(source, fps=1.0))
    message = str(info.value)
    assert "\n" not in message
    return info.value


@pytest.mark.parametrize("as_bytes", [False, True])
def test_text_file_named_mp4(tmp_path: Path, as_bytes: bool) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 100)
    err = expect_error(path.read_bytes() if as_bytes else path, "^not a decodable video: ")
    assert as_bytes or "notes.mp4" in str(err)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_random_bytes(tmp_path: Path, as_bytes: bool) -> None:
    blob = np.random.default_rng(0).bytes(64_000)
    path = tmp_path / "noise.mp4"
    path.write_bytes(blob)
    expect_error(blob if as_bytes else path, "^not a decodable video: ")


def test_empty_file_and_empty_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    expect_error(path, "^not a decodable video: empty.mp4 is empty")
    expect_error(b"", "^not a decodable video: .* is empty")


def test_audio_only_file(tmp_path: Path) -> None:
    path = write_audio_only(tmp_path / "sound.mp4")
    expect_error(path, r"^no video stream in sound\.mp4 \(streams: audio aac\)")
    expect_error(path.read_bytes(), "^no video stream in ")


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        VideoFileReader(tmp_path / "nowhere.mp4")


@pytest.mark.parametrize("as_bytes", [False, True])
def test_mp4_cut_in_half_with_index_at_the_end(
    videos: dict[str, Path], tmp_path: Path, as_bytes: bool
) -> None:
    cut = cut_in_half(videos["plain"], tmp_path / "half.mp4")
    # No index yet: FFmpeg can only say "invalid data"; the box walk says why.
    expect_error(cut.read_bytes() if as_bytes else cut, r"^truncated: mp4 box 'mdat' needs \d+ bytes")


def test_mp4_without_index_at_all(videos: dict[str, Path], tmp_path: Path) -> None:
    data = videos["plain"].read_bytes()
    moov = data.rindex(b"moov") - 4  # the index is the last box of a plain mp4
    path = tmp_path / "noindex.mp4"
    path.write_bytes(data[:moov])
    expect_error(path, r"^truncated: mp4 has no index \(moov box\)")


def test_faststart_mp4_cut_in_half(videos: dict[str, Path], tmp_path: Path) -> None:
    cut = cut_in_half(videos["faststart"], tmp_path / "half.mp4")
    reader = VideoFileReader(cut, fps=1.0)  # the index is intact: opening works
    assert reader.info.duration_s == pytest.approx(20.0, abs=0.2)
    got: list[SampledFrame] = []
    with pytest.raises(VideoDecodeError, match=r"^truncated.* at \d+\.\d s of 20\.0 s"):
        got.extend(reader)
    assert 5 <= len(got) <= 12  # the frames before the cut came through
    assert 5 < reader.position_s < 12


def test_faststart_mp4_cut_on_a_packet_boundary(videos: dict[str, Path], tmp_path: Path) -> None:
    cut = cut_at_packet(videos["faststart"], tmp_path / "clean_cut.mp4", fraction=0.5)
    err = expect_error(cut, r"^truncated: decoding stopped at \d+\.\d s of 20\.0 s in clean_cut\.mp4$")
    assert "of 20.0 s" in str(err)


def test_error_is_a_value_error() -> None:
    assert issubclass(VideoDecodeError, ValueError)


def _mpeg2_ts(width: int, height: int, frames: int, first_pts: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = np.full((height, width, 3), 10 * i, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = first_pts + i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def test_a_video_whose_frame_size_changes_is_read_at_its_first_size() -> None:
    """Two MPEG-TS streams of different sizes back to back (found by bench/fuzz.py): one grid."""
    spliced = _mpeg2_ts(96, 64, 20, 0) + _mpeg2_ts(160, 48, 20, 20)
    shapes = {f.image.shape for f in VideoFileReader(spliced, fps=10)}
    assert shapes == {(64, 96, 3)}


@pytest.mark.parametrize("first", [1, 37, 100, 175, 199, 200, 260])
def test_a_decode_that_seeks_gives_what_decoding_from_the_start_gives(
    videos: dict[str, Path], first: int
) -> None:
    """Sampled frame `first` on, by starting at the keyframe before it: the same frames (index,
    time, pixels) and the same count of frames read, where there is a keyframe to start from."""
    path = videos["plain"]
    whole = VideoFileReader(path, fps=FPS)
    expected = list(whole)[first:]
    reader = VideoFileReader(path, fps=FPS)
    got = list(reader.frames(first=first, seek=True))
    assert [(f.index, f.pts_s) for f in got] == [(f.index, f.pts_s) for f in expected]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(got, expected, strict=True))
    assert reader.frames_decoded == whole.frames_decoded
    point = reader.seek_point(first)
    if first >= len(list(whole)):
        assert point is None  # nothing to seek to: decoded from the start, and nothing yielded
    elif first >= 100:
        assert point is not None and point.frames_before > 0  # decoding started part way


@pytest.mark.parametrize(("name", "first", "fps"), [("bigbuckbunny.mp4", 7, 1.0), ("bikes.mp4", 9, 3.0)])
def test_a_seeking_decode_of_real_footage_with_b_frames_gives_the_same_frames(
    name: str, first: int, fps: float
) -> None:
    path = real_clip(name)
    expected = list(VideoFileReader(path, fps=fps))[first:]
    got = list(VideoFileReader(path, fps=fps).frames(first=first, seek=True))
    assert [(f.index, f.pts_s) for f in got] == [(f.index, f.pts_s) for f in expected]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(got, expected, strict=True))

"""The small parts of live ingest on their own: stream time, ingest state, frame images, SDP checks."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch

from longwatch.clients.cli import parse_size
from longwatch.clients.format import format_send_summary
from longwatch.clients.webrtc import SendResult, TestPatternTrack, http_base
from longwatch.stream.errors import BadRequest
from longwatch.stream.images import EncodedImage, RawImage, decode_image
from longwatch.stream.live import IngestState, StreamClock
from longwatch.stream.settings import LiveConfig
from longwatch.stream.webrtc import parse_offer

LIMITS = LiveConfig()


def encode_still(rgb: np.ndarray, codec: str = "png") -> bytes:
    """An image file's bytes (PNG, or JPEG with codec="mjpeg"), written with PyAV."""
    pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
    buf = io.BytesIO()
    with av.open(buf, "w", format="image2pipe") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], pix_fmt
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()


# --- stream time ----------------------------------------------------------------------------


def test_clock_starts_at_resume_point_and_keeps_spacing() -> None:
    clock = StreamClock(resume_s=12.0)
    assert [clock.to_stream(t) for t in (1700000000.0, 1700000000.5, 1700000003.0)] == [12.0, 12.5, 15.0]


def test_clock_refuses_backwards_unless_told_to_rebase() -> None:
    clock = StreamClock(resume_s=0.0)
    clock.to_stream(5.0)
    clock.to_stream(6.0)
    with pytest.raises(BadRequest, match=r"must not go backwards: 4 s came after 6 s"):
        clock.to_stream(4.0)
    # A sender whose clock restarts (WebRTC) continues from the last stream time instead.
    assert clock.to_stream(0.0, rebase_backwards=True) == 1.0
    assert clock.to_stream(0.5, rebase_backwards=True) == 1.5


@pytest.mark.parametrize("t", [float("nan"), float("inf")])
def test_clock_refuses_non_finite_times(t: float) -> None:
    with pytest.raises(BadRequest, match="finite"):
        StreamClock(0.0).to_stream(t)


# --- ingest state ---------------------------------------------------------------------------


def test_ingest_state_round_trips_through_safetensors() -> None:
    diffp = torch.randn(2, 3, 2352)
    state = IngestState(resume_s=0.1 + 0.2, frame_width=640, frame_height=480, diffp=diffp)
    back = IngestState.from_bytes(state.to_bytes())
    assert (back.resume_s, back.frame_width, back.frame_height) == (0.1 + 0.2, 640, 480)
    assert back.diffp is not None and torch.equal(back.diffp, diffp)
    empty = IngestState.from_bytes(IngestState().to_bytes())
    assert empty.diffp is None and empty.frame_width == 0


@pytest.mark.parametrize(
    "blob", [b"", b"\x00" * 8, b"not safetensors at all", b"\x05\x00\x00\x00\x00\x00\x00\x00{}"]
)
def test_ingest_state_rejects_foreign_bytes(blob: bytes) -> None:
    with pytest.raises(ValueError, match="not a longwatch ingest state"):
        IngestState.from_bytes(blob)


# --- frame images ---------------------------------------------------------------------------


def test_raw_image_checks_size_and_byte_count() -> None:
    rgb = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    image = RawImage(rgb.tobytes(), 64, 48, LIMITS)
    assert np.array_equal(image.rgb(64, 48), rgb)
    assert image.rgb(32, 24).shape == (24, 32, 3)
    with pytest.raises(BadRequest, match=r"needs 64\*48\*3 = 9216 bytes, got 9215"):
        RawImage(rgb.tobytes()[:-1], 64, 48, LIMITS)
    with pytest.raises(BadRequest, match=r"1\.\.4096 pixels a side, got 100000x48"):
        RawImage(b"", 100000, 48, LIMITS)
    with pytest.raises(BadRequest, match="got 0x0"):
        RawImage(b"", 0, 0, LIMITS)


@pytest.mark.parametrize("codec", ["png", "mjpeg"])
def test_encoded_image_decodes_png_and_jpeg(codec: str) -> None:
    rgb = np.zeros((48, 64, 3), dtype=np.uint8)
    rgb[:, 32:] = (200, 40, 10)
    image = EncodedImage(encode_still(rgb, codec), LIMITS)
    assert image.size() == (64, 48)
    decoded = image.rgb(64, 48)
    tolerance = 0 if codec == "png" else 12  # JPEG is lossy
    assert np.abs(decoded.astype(int) - rgb.astype(int)).mean() <= tolerance
    assert image.rgb(32, 24).shape == (24, 32, 3)


def test_undecodable_image_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match=r"encoded frame \(20 bytes\) is not a decodable image"):
        decode_image(b"definitely not a png", LIMITS)
    with pytest.raises(BadRequest, match="empty"):
        EncodedImage(b"", LIMITS)


def test_live_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 1 frame"):
        LiveConfig(queue_frames=0)


# --- SDP ------------------------------------------------------------------------------------


async def _real_offer() -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(TestPatternTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def test_parse_offer_accepts_a_real_offer_and_refuses_the_rest() -> None:
    import asyncio

    sdp = asyncio.run(_real_offer())
    assert parse_offer(sdp, "offer").sdp == sdp
    cases = [
        (sdp, "answer", 'expected an SDP offer \\(type "offer"\\)'),
        ("", "offer", "SDP offer is empty"),
        ("hello", "offer", "no video track"),
        ("v=0\r\nm=video x", "offer", "malformed SDP offer"),
        (sdp.replace("a=sendonly", "a=recvonly"), "offer", "does not send video"),
        ("v=0\r\n" + "a=x\r\n" * 20000, "offer", "the limit is"),
        (None, "offer", "empty"),
    ]
    for text, kind, message in cases:
        with pytest.raises(BadRequest, match=message):
            parse_offer(text, kind)


# --- client helpers -------------------------------------------------------------------------


def test_send_summary_and_small_parsers() -> None:
    stream = {"duration_s": 10.0, "chunks": 3, "frames_kept": 18, "frames_sampled": 20, "frames_dropped": 1}
    result = SendResult("cam1", 250, 10.25, False, {**stream, "state": "ready"})
    assert format_send_summary(result) == (
        "cam1: sent 250 frames in 10.2s (done); the service holds 0:10 of video in 3 chunks, "
        "18/20 frames kept, 1 dropped, state ready"
    )
    assert parse_size("640x480") == (640, 480)
    assert http_base("localhost:8080") == "http://localhost:8080"
    assert http_base("https://cams.example/") == "https://cams.example"


def test_test_pattern_frames_differ_and_are_deterministic() -> None:
    track = TestPatternTrack(64, 48)
    assert track.draw(0).shape == (48, 64, 3)
    assert not np.array_equal(track.draw(0), track.draw(1))
    assert np.array_equal(track.draw(5), TestPatternTrack(64, 48).draw(5))

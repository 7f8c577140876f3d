"""The small parts of live ingest on their own: stream time, ingest state, frame images, SDP checks,
the ICE address restriction."""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from aiortc import RTCPeerConnection
from footage import encode_still

from longwatch.clients import ice, main
from longwatch.clients.cli import parse_size
from longwatch.clients.format import format_send_summary
from longwatch.clients.webrtc import (
    SendResult,
    TestPatternTrack,
    WebRTCSender,
    WebRTCSendError,
    forward_keyframe_requests,
    http_base,
    video_codecs,
)
from longwatch.stream.errors import BadRequest
from longwatch.stream.images import EncodedImage, RawImage, decode_image
from longwatch.stream.live import IngestState, StreamClock
from longwatch.stream.settings import LiveConfig, settings_from_args
from longwatch.stream.webrtc import parse_offer, restrict_offer

LIMITS = LiveConfig()
LOOPBACK = ("127.0.0.1",)


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
    """An aiortc offer, its host candidates on loopback only."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(TestPatternTrack(), direction="sendonly")
    await ice.set_local_description(pc, await pc.createOffer(), LOOPBACK)
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def candidate_hosts(sdp: str) -> list[str]:
    """The connection address of each `a=candidate` line."""
    return [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]


def test_parse_offer_accepts_a_real_offer_and_refuses_the_rest() -> None:
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


# --- ICE addresses --------------------------------------------------------------------------


def test_ice_addresses_are_ip_literals_in_canonical_form() -> None:
    assert ice.parse_ice_addresses([" 127.0.0.1", "0:0::1", "127.0.0.1"]) == ("127.0.0.1", "::1")
    for bad, message in (
        ([], "at least one"),
        (["localhost"], "expected an IP address"),
        (["10.0.0"], "10.0.0"),
    ):
        with pytest.raises(ValueError, match=message):
            ice.parse_ice_addresses(bad)
    assert LiveConfig().ice_addresses is None
    assert LiveConfig(ice_addresses=("::1",)).ice_addresses == ("::1",)
    with pytest.raises(ValueError, match="got 'cam.local'"):
        LiveConfig(ice_addresses=("cam.local",))
    assert ice.allows(LOOPBACK, "127.0.0.1") and not ice.allows(LOOPBACK, "127.0.0.2")
    assert not ice.allows(LOOPBACK, "0b1f3c2a-1c9e-4b43.local")  # mDNS names are never allowed


def serve_args(argv: list[str]) -> argparse.Namespace:
    return main.build_parser().parse_args(["serve", *argv])


def test_webrtc_address_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("LONGWATCH_WEBRTC_ADDRESSES", raising=False)
    assert settings_from_args(serve_args([])).live.ice_addresses is None
    flags = ["--webrtc-address", "127.0.0.1", "--webrtc-address", "::1,127.0.0.1"]
    assert settings_from_args(serve_args(flags)).live.ice_addresses == ("127.0.0.1", "::1")
    monkeypatch.setenv("LONGWATCH_WEBRTC_ADDRESSES", "127.0.0.1, ::1")
    assert settings_from_args(serve_args([])).live.ice_addresses == ("127.0.0.1", "::1")
    # Flags replace the variable's addresses rather than add to them.
    assert settings_from_args(serve_args(["--webrtc-address", "::1"])).live.ice_addresses == ("::1",)
    monkeypatch.setenv("LONGWATCH_WEBRTC_ADDRESSES", "")
    assert settings_from_args(serve_args([])).live.ice_addresses is None
    for env, argv in (("127.0.0.1,nope", []), ("", ["--webrtc-address", "nope"])):
        monkeypatch.setenv("LONGWATCH_WEBRTC_ADDRESSES", env)
        with pytest.raises(SystemExit) as exit_:
            serve_args(argv)
        assert exit_.value.code == 2
        assert "expected an IP address such as 127.0.0.1 or ::1, got 'nope'" in capsys.readouterr().err
    args = main.build_parser().parse_args(["stream", "--test-pattern", "--ice-address", "127.0.0.1"])
    assert args.ice_addresses == [["127.0.0.1"]]


OFFER_CANDIDATES = (
    "a=candidate:1 1 udp 2122194687 127.0.0.1 58085 typ host generation 0\r\n"
    "a=candidate:2 1 udp 2122063615 192.0.2.2 52263 typ host generation 0\r\n"
    "a=candidate:3 1 udp 2122267903 ::1 54082 typ host generation 0\r\n"
    "a=candidate:4 1 udp 2122134271 4f1c2b6e-93a1-4c2d-8e77-0a9d5b1c3e21.local 42519 typ host\r\n"
    "a=candidate:5 1 tcp 1518214911 127.0.0.1 9 typ host tcptype active generation 0\r\n"
)


def test_remote_candidates_on_other_addresses_are_dropped_from_the_sdp() -> None:
    sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n" + OFFER_CANDIDATES + "a=end-of-candidates\r\n"
    kept = ice.restrict_remote_sdp(sdp, LOOPBACK)
    assert candidate_hosts(kept) == ["127.0.0.1", "127.0.0.1"]
    assert kept.startswith("v=0\r\nm=video") and kept.endswith("a=end-of-candidates\r\n")
    assert candidate_hosts(ice.restrict_remote_sdp(sdp, ("::1", "192.0.2.2"))) == ["192.0.2.2", "::1"]
    assert ice.restrict_remote_sdp("v=0\r\n", LOOPBACK) == "v=0\r\n"  # no candidates: nothing to drop
    with pytest.raises(ValueError, match=r"all on other addresses \(192\.0\.2\.2, ::1, 4f1c.*\.local\)"):
        ice.restrict_remote_sdp(sdp.replace("127.0.0.1", "192.0.2.2"), LOOPBACK)


def test_a_restricted_service_refuses_an_offer_it_cannot_reach() -> None:
    sdp = asyncio.run(_real_offer())
    assert candidate_hosts(sdp) == ["127.0.0.1"]
    offer = parse_offer(sdp, "offer")
    assert restrict_offer(offer, None) is offer and restrict_offer(offer, LOOPBACK).sdp == sdp
    elsewhere = parse_offer(sdp.replace(" 127.0.0.1 ", " 192.0.2.1 "), "offer")
    with pytest.raises(
        BadRequest, match=r"cannot connect to this service: .*\(192\.0\.2\.1\) .*127\.0\.0\.1"
    ):
        restrict_offer(elsewhere, LOOPBACK)


def test_a_restricted_sender_refuses_an_answer_it_cannot_reach() -> None:
    sender = WebRTCSender("127.0.0.1:8080", TestPatternTrack(), ice_addresses=("127.0.0.1", "127.0.0.1"))
    assert sender.ice_addresses == LOOPBACK
    answer = "v=0\r\n" + OFFER_CANDIDATES
    assert candidate_hosts(sender._restrict(answer)) == ["127.0.0.1", "127.0.0.1"]
    with pytest.raises(WebRTCSendError, match=r"on other addresses \(192\.0\.2\.2.*--webrtc-address"):
        sender._restrict(answer.replace("127.0.0.1", "192.0.2.2"))
    assert WebRTCSender("127.0.0.1:8080", TestPatternTrack())._restrict(answer) == answer
    with pytest.raises(ValueError, match="got 'localhost'"):
        WebRTCSender("127.0.0.1:8080", TestPatternTrack(), ice_addresses=("localhost",))


class RecordingProtocol:
    """Stands in for aioice's StunProtocol: records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def send_stun(self, message: object, addr: tuple[str, int]) -> None:
        self.sent.append(addr)


def test_restricted_gathering_stays_on_its_addresses_and_leaks_to_no_other_peer() -> None:
    from aioice import Candidate, stun
    from aiortc import RTCConfiguration, RTCPeerConnection

    async def run() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(TestPatternTrack(), direction="sendonly")
        await ice.set_local_description(pc, await pc.createOffer(), LOOPBACK)
        try:
            assert candidate_hosts(pc.localDescription.sdp) == ["127.0.0.1"]
            (connection,) = ice._connections(pc)
            # Trickled candidates on other addresses never reach aioice.
            for host in ("192.0.2.7", "127.0.0.1", "4f1c2b6e-93a1-4c2d-8e77-0a9d5b1c3e21.local"):
                await connection.add_remote_candidate(
                    Candidate("f", 1, "udp", 100, host, 5000, "host")  # foundation, component, ...
                )
            assert [c.host for c in connection.remote_candidates] == ["127.0.0.1"]
            # Checks from other addresses are not answered (this one would get a 400 otherwise).
            protocol = RecordingProtocol()
            request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
            connection.request_received(request, ("192.0.2.7", 5000), protocol)
            connection.request_received(request, ("127.0.0.1", 5000), protocol)
            assert protocol.sent == [("127.0.0.1", 5000)]
        finally:
            await pc.close()

    asyncio.run(run())
    import aioice.ice

    ice.install()  # again: harmless
    original = ice._aioice_host_addresses
    assert original is not None and aioice.ice.get_host_addresses is ice._host_addresses
    # Outside set_local_description (other peers, unrestricted ones) aioice's own answer stands.
    assert aioice.ice.get_host_addresses(True, True) == original(True, True)
    ice.uninstall()
    assert aioice.ice.get_host_addresses is original
    ice.uninstall()  # again: harmless
    assert candidate_hosts(asyncio.run(_real_offer())) == ["127.0.0.1"]  # installs itself again
    assert aioice.ice.get_host_addresses is ice._host_addresses


class PacketSource(TestPatternTrack):
    """A track that could send pre-encoded packets: it takes keyframe requests itself."""

    requested = 0

    def request_keyframe(self) -> None:
        self.requested += 1


def test_keyframe_requests_reach_a_track_of_packets() -> None:
    async def requests_seen(track: TestPatternTrack) -> None:
        pc = RTCPeerConnection()
        try:
            sender = pc.addTransceiver(track, direction="sendonly").sender
            forward_keyframe_requests(sender, track)
            sender._send_keyframe()  # what aiortc does on a receiver's PLI
        finally:
            await pc.close()

    packets = PacketSource()
    asyncio.run(requests_seen(packets))
    assert packets.requested == 1
    asyncio.run(requests_seen(TestPatternTrack()))  # an encoding track keeps aiortc's own handling


def test_one_video_codec_is_offered_with_its_retransmissions() -> None:
    assert [c.mimeType for c in video_codecs("h264")][-1] == "video/rtx"
    assert {c.mimeType for c in video_codecs("H264")} == {"video/H264", "video/rtx"}
    with pytest.raises(WebRTCSendError, match="cannot send video codec 'AV2'.*H264.*VP8"):
        video_codecs("AV2")


def test_receive_buffers_grow_on_the_ice_sockets() -> None:
    def sizes(pc: RTCPeerConnection) -> list[int]:
        sockets = [p.transport.get_extra_info("socket") for c in ice._connections(pc) for p in c._protocols]
        return [s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) for s in sockets]

    async def before_and_after() -> tuple[list[int], list[int]]:
        pc = RTCPeerConnection()
        try:
            pc.addTransceiver("video", direction="recvonly")
            await ice.set_local_description(pc, await pc.createOffer(), LOOPBACK)
            before = sizes(pc)
            ice.enlarge_receive_buffers(pc, size=1 << 20)
            return before, sizes(pc)
        finally:
            await pc.close()

    before, after = asyncio.run(before_and_after())
    assert before and len(after) == len(before)
    rmem_max = Path("/proc/sys/net/core/rmem_max")  # what the kernel lets a process ask for
    allowed = int(rmem_max.read_text()) if rmem_max.exists() else 0
    for old, new in zip(before, after, strict=True):
        assert new >= min(old, 1 << 20)
        if allowed >= 1 << 20:
            assert new >= 1 << 20

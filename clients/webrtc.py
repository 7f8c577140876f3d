"""Sending video to longwatch over WebRTC with aiortc: a file, a camera (v4l2) or a test pattern.

    from longwatch.clients.webrtc import open_source, send_video

    result = send_video("localhost:8080", open_source(path="clip.mp4"), stream_id="cam1")
    print(result.frames_sent, result.stream["chunks"])

The sender POSTs its SDP offer to the service's `/offer` (aiortc gathers every ICE candidate
before the offer is complete, so there is no trickle), applies the answer and sends until the
source ends, `seconds` pass, or it is cancelled (Ctrl-C in `longwatch stream`). Then it closes
the connection and waits until the service reports the stream no longer live, i.e. its last
partial chunk is committed, so an immediate reconnect with the same id continues the stream.
Files play at their own speed (aiortc's MediaPlayer paces them), as a camera would.

Given several servers (replicas on one Redis) and `reconnect_s`, a sender whose server goes away
(killed, restarting: its HTTP side stops answering, or the connection fails) offers again, to the
next server in turn, until one takes the stream (once the dead one's lease has run out) or
`reconnect_s` passes; the track goes on where it was.

`ice_addresses` keeps the connection on those addresses at both ends (longwatch.clients.ice):
`("127.0.0.1",)` to a service started with `--webrtc-address 127.0.0.1` never leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from longwatch.clients.client import DEFAULT_HTTP_SERVER, LongWatchError
from longwatch.clients.credentials import NO_CREDENTIALS, Credentials
from longwatch.clients.ice import parse_ice_addresses, restrict_remote_sdp, set_local_description

__all__ = [
    "DEFAULT_HTTP_SERVER",
    "SendResult",
    "TestPatternTrack",
    "WebRTCSender",
    "open_source",
    "send_video",
]
VIDEO_CLOCK = 90_000  # RTP's video clock rate
DRAIN_S = 0.3  # after the source ends, time for the frames in flight to arrive
ENDED_TIMEOUT_S = 30.0  # how long to wait for the service to commit the last chunk
_POLL_S = 0.1
log = logging.getLogger(__name__)
PROBE_S = 1.0  # with reconnect_s: how often the server is asked whether it is still there
RECONNECT_PAUSE_S = 0.5  # between offers while no server takes the stream

ProgressCallback = Callable[[int, float], None]  # (frames sent, seconds since the start)


class WebRTCSendError(LongWatchError):
    """Signalling or the connection failed; the message is one line saying why.

    http_status: the service's HTTP status when it answered with an error, else 0.
    """

    def __init__(self, message: str, http_status: int = 0) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class SendResult:
    """What a send did, and the service's view of the stream once it ended (GET /api/streams/ID)."""

    stream_id: str
    frames_sent: int
    seconds: float
    interrupted: bool  # stopped by cancellation (Ctrl-C) rather than by the source or `seconds`
    stream: dict[str, Any]
    reconnects: int = 0  # times the server went away and the stream went on on one (reconnect_s)
    server: str = ""  # the server the stream ended on


def http_base(server: str, tls: bool = False) -> str:
    """ "host:port" or a full URL -> the URL the service's HTTP API lives under (no trailing slash)."""
    base = (
        server if server.startswith(("http://", "https://")) else f"{'https' if tls else 'http'}://{server}"
    )
    return base.rstrip("/")


# --- sources --------------------------------------------------------------------------------


class FramePacer:
    """Real-time pacing for a generated track: `wait(n)` returns when frame n is due at `fps`,
    counted from the first call (which returns at once)."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self._start: float | None = None

    async def wait(self, n: int) -> None:
        if self._start is None:
            self._start = time.monotonic()
            return
        await asyncio.sleep(max(0.0, self._start + n / self.fps - time.monotonic()))


class TestPatternTrack(MediaStreamTrack):
    """Colour bars with a white square sweeping across, at `fps`: every frame differs a little.

    Deterministic (frame n always looks the same) and cheap to draw, for trying a service
    without a camera and for tests.
    """

    kind = "video"
    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, width: int = 320, height: int = 240, fps: float = 15.0) -> None:
        super().__init__()
        if width < 16 or height < 16 or fps <= 0:
            raise ValueError(
                f"test pattern needs at least 16x16 pixels and fps > 0, got {width}x{height}@{fps}"
            )
        self.width, self.height, self.fps = width, height, fps
        self._bars = _colour_bars(width, height)  # (H, W, 3) uint8
        self._n = 0
        self._pacer = FramePacer(fps)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait(self._n)
        frame = av.VideoFrame.from_ndarray(self.draw(self._n), format="rgb24")
        frame.pts = round(self._n * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._n += 1
        return frame

    def draw(self, n: int) -> np.ndarray:
        """Frame n: (height, width, 3) uint8 RGB."""
        image = self._bars.copy()
        side = max(4, self.height // 6)
        x = (n * 4) % max(1, self.width - side)
        y = (self.height - side) // 2
        image[y : y + side, x : x + side] = 255
        return image


def _colour_bars(width: int, height: int) -> np.ndarray:
    colours = np.array(
        [[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0], [192, 0, 192], [192, 0, 0], [0, 0, 192]],
        dtype=np.uint8,
    )
    columns = colours[np.arange(width) * len(colours) // width]  # (W, 3)
    return np.ascontiguousarray(np.broadcast_to(columns, (height, width, 3)))


def open_source(
    path: str | None = None,
    camera: str | None = None,
    test_pattern: bool = False,
    size: tuple[int, int] | None = None,
) -> MediaStreamTrack:
    """The video track of exactly one source: a file, a v4l2 camera device, or the test pattern.

    size: (width, height) asked of a camera or given to the test pattern; a file keeps its own.
    """
    if sum((path is not None, camera is not None, test_pattern)) != 1:
        raise WebRTCSendError("give exactly one source: a file, a camera device or the test pattern")
    if test_pattern:
        width, height = size or (320, 240)
        return TestPatternTrack(width, height)
    options = {"video_size": f"{size[0]}x{size[1]}"} if size and camera else None
    try:
        player = MediaPlayer(path or camera, format="v4l2" if camera else None, options=options)
    except (OSError, av.FFmpegError) as e:
        raise WebRTCSendError(f"cannot open {path or camera}: {_one_line(e)}") from e
    if player.video is None:
        raise WebRTCSendError(f"{path or camera} has no video")
    return player.video


class CountingTrack(MediaStreamTrack):
    """Relays a source track to the connection, counting frames and noticing when it ends."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source
        self.frames_sent = 0
        self.ended = asyncio.Event()

    async def recv(self) -> av.VideoFrame:
        try:
            frame = await self.source.recv()
        except MediaStreamError:
            self.ended.set()
            raise
        self.frames_sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()


class ConnectionTrack(MediaStreamTrack):
    """What one connection sends: the sender's track, relayed. aiortc stops a connection's track
    when the connection closes; stopping this one leaves the source to the next connection."""

    kind = "video"

    def __init__(self, track: CountingTrack) -> None:
        super().__init__()
        self.track = track

    async def recv(self) -> av.VideoFrame:
        return await self.track.recv()


# --- the sender -----------------------------------------------------------------------------


class WebRTCSender:
    """One WebRTC connection sending one track to a longwatch service as a live stream.

    stream_id None lets the service pick one (it is in the result).
    ice_addresses: the addresses ICE may use at both ends, e.g. ("127.0.0.1",) (ValueError if one
        is not an IP address); None: all of this machine's addresses but loopback, and the
        service's candidates as it offers them.
    video_codec: offer only this codec ("VP8", "H264"), e.g. for a track of packets already
        encoded with it (aiortc sends av.Packets as they are); None offers aiortc's usual list.
    credentials: the API key and TLS settings for the service's HTTP side (HTTPS with TLS).
    http_server: "host:port", or several ("a:8080,b:8080", or a list): replicas of one service.
    reconnect_s: > 0: when the server goes away mid-stream, offer again (to each server in turn)
        for up to this long before giving up; 0: fail at once, as a sender with one server should
        where nobody will restart it.
    """

    def __init__(
        self,
        http_server: str | Sequence[str],
        track: MediaStreamTrack,
        stream_id: str | None = None,
        on_progress: ProgressCallback | None = None,
        ice_addresses: tuple[str, ...] | None = None,
        video_codec: str | None = None,
        credentials: Credentials = NO_CREDENTIALS,
        reconnect_s: float = 0.0,
    ) -> None:
        self.credentials = credentials
        servers = http_server.split(",") if isinstance(http_server, str) else list(http_server)
        self.bases = [http_base(s.strip(), credentials.uses_tls) for s in servers if s.strip()]
        if not self.bases:
            raise ValueError("no HTTP server given")
        if reconnect_s < 0:
            raise ValueError(f"reconnect_s must be >= 0, got {reconnect_s}")
        self.base = self.bases[0]
        self.reconnect_s = reconnect_s
        self.reconnects = 0
        self.track = CountingTrack(track)
        self.stream_id = stream_id
        self.on_progress = on_progress
        self.ice_addresses = None if ice_addresses is None else parse_ice_addresses(ice_addresses)
        self.codecs = None if video_codec is None else video_codecs(video_codec)

    async def run(self, seconds: float | None = None) -> SendResult:
        """Send until the source ends, `seconds` pass or the task is cancelled; then end cleanly."""
        started = time.monotonic()
        interrupted = False
        connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context() or True)
        async with aiohttp.ClientSession(
            headers=self.credentials.http_headers(), connector=connector
        ) as http:
            pc: RTCPeerConnection | None = None
            try:
                pc = await self._connect(http)
                while True:
                    try:
                        interrupted = await self._send(http, pc, started, seconds)
                        break
                    except ServerGone as gone:
                        await pc.close()
                        if self.reconnect_s <= 0:
                            raise WebRTCSendError(str(gone)) from None
                        pc = await self._reconnect(http, gone)
            finally:
                if pc is not None:
                    await pc.close()
                self.track.stop()
            elapsed = time.monotonic() - started
            stream = await self._wait_ended(http)
        return SendResult(
            self.stream_id or "",
            self.track.frames_sent,
            elapsed,
            interrupted,
            stream,
            self.reconnects,
            self.base,
        )

    async def _connect(self, http: aiohttp.ClientSession) -> RTCPeerConnection:
        """A new connection to self.base sending the track (the same track after a reconnect)."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        transceiver = pc.addTransceiver(ConnectionTrack(self.track), direction="sendonly")
        if self.codecs is not None:
            transceiver.setCodecPreferences(self.codecs)
        forward_keyframe_requests(transceiver.sender, self.track.source)
        try:
            await self._offer(http, pc)
        except BaseException:
            await pc.close()
            raise
        return pc

    async def _reconnect(self, http: aiohttp.ClientSession, gone: ServerGone) -> RTCPeerConnection:
        """Offer to the next server, and the next, until one takes the stream or reconnect_s passes.

        A replica answers 503 while the dead one's lease on the stream has not run out; a server
        that is down refuses the connection: both are tried again. Any other refusal ends it.
        """
        log.warning("%s; reconnecting (up to %gs)", gone, self.reconnect_s)
        deadline = time.monotonic() + self.reconnect_s
        at = self.bases.index(self.base)
        while True:
            await asyncio.sleep(RECONNECT_PAUSE_S)
            at = (at + 1) % len(self.bases)
            self.base = self.bases[at]
            try:
                pc = await self._connect(http)
            except WebRTCSendError as e:
                if e.http_status not in (0, 503) or time.monotonic() >= deadline:
                    raise WebRTCSendError(f"{gone}; no server took the stream again: {e}") from None
                continue
            self.reconnects += 1
            log.warning("stream %s goes on through %s", self.stream_id, self.base)
            return pc

    async def _offer(self, http: aiohttp.ClientSession, pc: RTCPeerConnection) -> None:
        await set_local_description(pc, await pc.createOffer(), self.ice_addresses)
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "stream_id": self.stream_id}
        answer = await self._request(http, "POST", "/offer", body)
        self.stream_id = answer["stream_id"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=self._restrict(answer["sdp"]), type="answer"))

    def _restrict(self, sdp: str) -> str:
        """The answer without ICE candidates on addresses this sender may not use."""
        if self.ice_addresses is None:
            return sdp
        try:
            return restrict_remote_sdp(sdp, self.ice_addresses)
        except ValueError as e:
            raise WebRTCSendError(
                f"{self.base} cannot be reached on the allowed addresses: {e} "
                "(start the service with --webrtc-address for them, or drop --ice-address)"
            ) from None

    async def _send(
        self, http: aiohttp.ClientSession, pc: RTCPeerConnection, started: float, seconds: float | None
    ) -> bool:
        """Wait for the end; True if it came from cancellation (Ctrl-C). ServerGone if the server
        went away (with reconnect_s, found within PROBE_S by asking it)."""
        deadline = None if seconds is None else started + seconds
        probed = time.monotonic()
        try:
            while not self.track.ended.is_set():
                if pc.connectionState == "failed":
                    raise ServerGone(f"WebRTC connection to {self.base} failed (ICE could not connect)")
                if pc.connectionState == "closed":
                    raise ServerGone(f"{self.base} closed the connection (is the service stopping?)")
                if deadline is not None and time.monotonic() >= deadline:
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.track.ended.wait(), timeout=0.5)
                if self.on_progress is not None:
                    self.on_progress(self.track.frames_sent, time.monotonic() - started)
                if self.reconnect_s > 0 and time.monotonic() - probed >= PROBE_S:
                    probed = time.monotonic()
                    await self._probe(http)
            await asyncio.sleep(DRAIN_S)
        except asyncio.CancelledError:
            _uncancel()
            return True
        return False

    async def _probe(self, http: aiohttp.ClientSession) -> None:
        """ServerGone unless the server answers for the stream (a killed one's socket is closed: at
        once; ICE alone would take tens of seconds to give up on it)."""
        try:
            await asyncio.wait_for(self._request(http, "GET", f"/api/streams/{self.stream_id}"), PROBE_S * 3)
        except asyncio.TimeoutError:
            raise ServerGone(f"{self.base} stopped answering") from None
        except WebRTCSendError as e:
            if e.http_status in (0, 503):
                raise ServerGone(str(e)) from None

    async def _wait_ended(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """Poll the stream until it is no longer live: its last chunk is committed then."""
        deadline = time.monotonic() + ENDED_TIMEOUT_S
        while True:
            try:
                stream = await self._request(http, "GET", f"/api/streams/{self.stream_id}")
            except WebRTCSendError as e:
                if e.http_status == 404:  # a new stream that got no frame is not kept
                    raise WebRTCSendError(
                        f"no frame reached the service; {self.stream_id} was not kept"
                    ) from e
                raise
            if stream.get("state") != "live" or time.monotonic() > deadline:
                return stream
            await asyncio.sleep(_POLL_S)

    async def _request(
        self, http: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        url = self.base + path
        try:
            async with http.request(method, url, json=body) as response:
                data = await response.json(content_type=None)
                if response.status >= 400:
                    error = data.get("error") if isinstance(data, dict) else None
                    raise WebRTCSendError(f"{url}: {error or f'HTTP {response.status}'}", response.status)
        except aiohttp.ClientError as e:
            raise WebRTCSendError(f"cannot reach {url}: {_one_line(e)}") from e
        except ValueError as e:
            raise WebRTCSendError(f"{url} did not answer JSON: {_one_line(e)}") from e
        if not isinstance(data, dict):
            raise WebRTCSendError(f"{url} answered {type(data).__name__}, expected a JSON object")
        return data


class ServerGone(Exception):
    """The server stopped answering or the connection to it ended while the source had more."""


def forward_keyframe_requests(sender: RTCRtpSender, source: MediaStreamTrack) -> None:
    """Let a track of pre-encoded packets answer the receiver's keyframe requests (PLI).

    aiortc's sender forces a keyframe only when it encodes frames itself; a track that sends
    av.Packets as they are can offer `request_keyframe()` instead, and the requests go there.
    Without it a receiver that lost a keyframe (one sent before its end of the connection was
    ready, a packet lost) could decode nothing until the source's next scheduled keyframe.
    """
    request = getattr(source, "request_keyframe", None)
    if callable(request):
        sender._send_keyframe = request  # the method aiortc calls on a PLI


def video_codecs(name: str) -> list[Any]:
    """aiortc's capabilities for one video codec by name (with its retransmission entry)."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for c in codecs if c.mimeType.lower() == f"video/{name.lower()}"]
    if not chosen:
        names = sorted({c.mimeType.split("/")[1] for c in codecs} - {"rtx"})
        raise WebRTCSendError(f"aiortc cannot send video codec {name!r}; it has {', '.join(names)}")
    return chosen + [c for c in codecs if c.mimeType.lower() == "video/rtx"]


def send_video(
    http_server: str | Sequence[str],
    track: MediaStreamTrack,
    stream_id: str | None = None,
    seconds: float | None = None,
    on_progress: ProgressCallback | None = None,
    ice_addresses: tuple[str, ...] | None = None,
    video_codec: str | None = None,
    credentials: Credentials = NO_CREDENTIALS,
    reconnect_s: float = 0.0,
) -> SendResult:
    """Blocking form of `WebRTCSender(...).run(seconds)`, on a fresh event loop.

    Ctrl-C (SIGINT) ends the send cleanly, the same as the source ending: the result says so.
    """
    sender = WebRTCSender(
        http_server, track, stream_id, on_progress, ice_addresses, video_codec, credentials, reconnect_s
    )
    return asyncio.run(sender.run(seconds))


def _uncancel() -> None:
    """Take back a cancellation we handle (Ctrl-C ends the send cleanly instead of aborting it)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

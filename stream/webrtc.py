"""WebRTC ingest with aiortc: each peer connection is one live stream, its video track the frames.

Signalling is one HTTP exchange (stream/http.py): the sender POSTs an SDP offer that already
holds its ICE candidates (no trickle) and gets the answer back. The service offers host
candidates only and contacts no STUN server, so a sender must reach one of the service's own
addresses (the same machine or network). `LiveConfig.ice_addresses` narrows those addresses,
on both ends (clients/ice.py): 127.0.0.1 keeps every packet on loopback.

Each received frame (an av.VideoFrame, decoded by aiortc) goes to the stream's `LiveSession`
with its presentation time; only the frames the sampler keeps are colour-converted. The peer is
closed, and the stream's last partial chunk committed, when the sender closes its connection or
ends its track, when ICE fails (aioice's consent checks notice a vanished sender within about
30 s), when no connection is made within `CONNECT_TIMEOUT_S`, and when the service stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription

from longwatch.clients.ice import (
    enlarge_receive_buffers,
    restrict_remote_sdp,
    selected_pair,
    set_local_description,
)
from longwatch.stream.errors import BadRequest, Stopping, one_line
from longwatch.stream.images import VideoFrameImage
from longwatch.stream.live import LiveRegistry, LiveSession

log = logging.getLogger(__name__)

WEBRTC_SOURCE = "live:webrtc"
MAX_SDP_CHARS = 64 * 1024  # a browser's offer is a few KB
CONNECT_TIMEOUT_S = 30.0
READERS_DRAIN_S = 2.0  # after close, how long the track readers may take with the frames already received


def parse_offer(sdp: object, sdp_type: object) -> RTCSessionDescription:
    """Check an offer before any stream is opened for it; BadRequest with one line if unusable."""
    if sdp_type != "offer":
        raise BadRequest(f'expected an SDP offer (type "offer"), got type {sdp_type!r}')
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadRequest("SDP offer is empty")
    if len(sdp) > MAX_SDP_CHARS:
        raise BadRequest(f"SDP offer is {len(sdp)} characters, the limit is {MAX_SDP_CHARS}")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as e:  # noqa: BLE001 - aiortc's parser fails with assorted exceptions
        raise BadRequest(f"malformed SDP offer: {one_line(e)}") from None
    video = [m for m in parsed.media if m.kind == "video"]
    if not video:
        raise BadRequest("SDP offer has no video track (no m=video section)")
    if not any(m.direction in (None, "sendonly", "sendrecv") for m in video):
        raise BadRequest("SDP offer does not send video (its m=video sections are recvonly or inactive)")
    return RTCSessionDescription(sdp=sdp, type="offer")


def restrict_offer(offer: RTCSessionDescription, addresses: tuple[str, ...] | None) -> RTCSessionDescription:
    """The offer without ICE candidates on addresses WebRTC may not use; BadRequest if none is left."""
    if addresses is None:
        return offer
    try:
        return RTCSessionDescription(sdp=restrict_remote_sdp(offer.sdp, addresses), type=offer.type)
    except ValueError as e:
        raise BadRequest(f"the offer cannot connect to this service: {e} (--webrtc-address)") from None


class WebRTCIngest:
    """The peer connections feeding live streams; every method runs on the HTTP server's loop.

    ice_addresses: LiveConfig.ice_addresses, the addresses the peers may use (None: all).
    """

    def __init__(self, registry: LiveRegistry, ice_addresses: tuple[str, ...] | None = None) -> None:
        self.registry = registry
        self.ice_addresses = ice_addresses
        self._peers: set[_Peer] = set()

    async def accept_offer(self, sdp: object, sdp_type: object, stream_id: str | None) -> tuple[str, str]:
        """Open (or continue) the stream and answer the offer; returns (answer SDP, stream id)."""
        offer = restrict_offer(parse_offer(sdp, sdp_type), self.ice_addresses)
        session = await asyncio.to_thread(self.registry.open, stream_id, WEBRTC_SOURCE)
        peer = _Peer(session, self._peers.discard, self.ice_addresses)
        self._peers.add(peer)
        try:
            answer = await peer.answer(offer)
        except Exception as e:  # noqa: BLE001 - aiortc rejects offers with assorted exceptions
            await peer.close()
            raise BadRequest(f"cannot use this SDP offer: {one_line(e)}") from None
        return answer, session.stream_id

    async def close_all(self) -> None:
        """Server stop: close every peer; each stream's last chunk commits."""
        await asyncio.gather(*(peer.close() for peer in list(self._peers)), return_exceptions=True)


class _Peer:
    """One RTCPeerConnection and the live session its video feeds."""

    def __init__(
        self,
        session: LiveSession,
        on_closed: Callable[[_Peer], None],
        ice_addresses: tuple[str, ...] | None,
    ) -> None:
        self.session = session
        self._on_closed = on_closed
        self._ice_addresses = ice_addresses
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._tasks: set[asyncio.Task[None]] = set()  # the track readers
        self._watcher: asyncio.Task[None] | None = None
        self._video: MediaStreamTrack | None = None
        self._closing: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, offer: RTCSessionDescription) -> str:
        await self.pc.setRemoteDescription(offer)
        await set_local_description(self.pc, await self.pc.createAnswer(), self._ice_addresses)
        enlarge_receive_buffers(self.pc)  # each stream's packets survive short stalls of the loop
        self._watcher = asyncio.ensure_future(self._watch_connect())
        return self.pc.localDescription.sdp

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self._video is None:
            self._video = track
            self._spawn(self._consume(track))
        else:  # audio, or a second video track: read and discard, or aiortc buffers it forever
            self._spawn(_discard(track))

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            pair = selected_pair(self.pc)
            ends = "unknown" if pair is None else f"{_endpoint(pair[0])} <- {_endpoint(pair[1])}"
            log.info("live stream %s: WebRTC connected, ICE pair %s", self.session.stream_id, ends)
        if self.pc.connectionState in ("failed", "closed"):
            self.schedule_close()

    async def _consume(self, track: MediaStreamTrack) -> None:
        sid = self.session.stream_id
        try:
            while True:
                frame = await track.recv()
                # The sender's clock may wrap or restart: re-anchor rather than refuse.
                self.session.offer(float(frame.time or 0.0), VideoFrameImage(frame), rebase_backwards=True)
        except MediaStreamError:
            log.info("live stream %s: the WebRTC track ended", sid)
        except Stopping:
            log.info("live stream %s: the service is stopping", sid)
        except Exception as e:  # noqa: BLE001 - a peer cannot be told; log and end the stream
            log.error("live stream %s: WebRTC frames refused: %s", sid, one_line(e))
        finally:
            self.schedule_close()

    async def _watch_connect(self) -> None:
        await asyncio.sleep(CONNECT_TIMEOUT_S)
        if self.pc.connectionState != "connected":
            log.warning(
                "live stream %s: no WebRTC connection after %g s", self.session.stream_id, CONNECT_TIMEOUT_S
            )
            self.schedule_close()

    def schedule_close(self) -> asyncio.Task[None]:
        """Start closing (once); the task ends when the stream's last chunk is committed."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        return self._closing

    async def close(self) -> None:
        await asyncio.shield(self.schedule_close())

    async def _close(self) -> None:
        try:
            if self._watcher is not None and self._watcher is not asyncio.current_task():
                self._watcher.cancel()
            await self.pc.close()  # ends the tracks: the readers take the frames still queued, then stop
            readers = [t for t in self._tasks if t is not asyncio.current_task()]
            if readers:
                _, late = await asyncio.wait(readers, timeout=READERS_DRAIN_S)
                for task in late:
                    task.cancel()
            await asyncio.to_thread(self.session.close)  # the last partial chunk commits here
        finally:
            self._on_closed(self)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _endpoint(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _discard(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()

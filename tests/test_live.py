"""Live ingest end to end: real gRPC on loopback, real aiortc peers, real Chromium, real Redis, real footage.

One service for the module (2 fps, 4 frames per chunk, small frames) so that a few seconds of
video make several chunks. Every WebRTC peer here (the service's, the aiortc senders, Chromium)
uses 127.0.0.1 only: no packet goes to another address, the machine's own LAN address included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from browser import chromium_driver
from footage import encode_still, real_clip
from test_live_units import _real_offer, candidate_hosts

from longwatch.clients import main
from longwatch.clients.client import LiveFrame, LongWatchClient, LongWatchError
from longwatch.clients.ice import restrict_remote_sdp, selected_pair, set_local_description
from longwatch.clients.webrtc import open_source, send_video
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.memory.store import open_store as open_store_for
from longwatch.model.train.synthetic import encode_video
from longwatch.proto import longwatch_pb2 as pb
from longwatch.proto import longwatch_pb2_grpc as pb_grpc
from longwatch.proto.streams import StreamState
from longwatch.stream.decode import VideoFileReader
from longwatch.stream.images import scale_rgb
from longwatch.stream.model_lock import ASK
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import IngestConfig, LiveConfig, ServiceSettings

FPS = 2.0
FRAMES_PER_CHUNK = 4
SIZE = (160, 68)  # width, height: bikes.mp4's 640x272 scaled down
LOOPBACK = ("127.0.0.1",)  # the only address WebRTC may use in these tests, at both ends


def make_settings(state_dir: Path, redis_url: str) -> ServiceSettings:
    return ServiceSettings(
        port=0,
        http_port=0,
        redis_url=redis_url,
        state_dir=state_dir,
        workers=8,
        ingest=IngestConfig(fps=FPS, frames_per_chunk=FRAMES_PER_CHUNK, max_tokens_per_frame=16),
        live=LiveConfig(ice_addresses=LOOPBACK),
    )


@pytest.fixture(scope="module")
def server(state_dir: Path, module_redis: EmbeddedRedis) -> Iterator[LongWatchServer]:
    with LongWatchServer(make_settings(state_dir, module_redis.url)) as srv:
        yield srv


@pytest.fixture(scope="module")
def bikes() -> list[np.ndarray]:
    """Real footage: bikes.mp4 at 4 fps (40 frames), scaled to SIZE."""
    reader = VideoFileReader(str(real_clip("bikes.mp4")), fps=4.0)
    return [scale_rgb(f.image, *SIZE) for f in reader]


def timed(frames: Iterable[np.ndarray], spacing: float, start: float = 0.0) -> list[LiveFrame]:
    return [LiveFrame(start + k * spacing, rgb=f) for k, f in enumerate(frames)]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def http_json(
    base: str, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def chunks_of(server: LongWatchServer, stream_id: str) -> int:
    """Committed chunks of a stream, -1 before it exists."""
    record = server.store.get_stream(stream_id)
    return -1 if record is None else record.chunks


def stream_keys(redis_url: str, stream_id: str) -> set[bytes]:
    r = redis.Redis.from_url(redis_url)
    try:
        return set(r.scan_iter(match=f"lw:{{{stream_id}}}:*"))
    finally:
        r.close()


def last(progress: Iterable[pb.LiveProgress]) -> pb.LiveProgress:
    messages = list(progress)
    assert messages and messages[-1].done and not any(m.done for m in messages[:-1])
    return messages[-1]


# --- gRPC IngestFrames ----------------------------------------------------------------------


def test_ingest_frames_commits_as_it_goes_and_ask_sees_the_latest_frames(
    server: LongWatchServer, client: LongWatchClient, bikes: list[np.ndarray]
) -> None:
    """40 real frames 0.25 s apart (raw and JPEG mixed); Ask in the middle sees the frames not yet committed."""
    frames = timed(bikes, 0.25)
    frames = [
        LiveFrame(f.timestamp_s, encoded=encode_still(f.rgb, "mjpeg")) if k % 3 == 0 else f
        for k, f in enumerate(frames)
    ]
    halfway = threading.Event()
    go_on = threading.Event()

    def paced() -> Iterator[LiveFrame]:
        for k, frame in enumerate(frames):
            if k == 26:  # 6.5 s: 13 frames sampled, 3 chunks committed, 1 frame pending
                halfway.set()
                assert go_on.wait(timeout=60)
            yield frame

    progress: list[pb.LiveProgress] = []
    feeder = threading.Thread(target=lambda: progress.extend(client.ingest_frames("grpc-cam", paced())))
    feeder.start()
    try:
        assert halfway.wait(timeout=30)
        wait_until(lambda: chunks_of(server, "grpc-cam") == 3, 30, "3 committed chunks")
        session = server.service.live.get("grpc-cam")
        wait_until(
            lambda: session.stats().frames_received == 26 and session.ingestor.pending, 30, "a pending frame"
        )
        assert client.get_stream("grpc-cam").state == "live"
        during = client.ask("grpc-cam", "What is happening right now?", top_k=1, max_new_tokens=2)
    finally:
        go_on.set()
        feeder.join(timeout=60)
    # top-1 retrieved, plus the latest committed chunk (2) and the pending frames as chunk 3.
    indices = [e.chunk_index for e in during.evidence]
    assert indices == sorted(indices) and indices[-2:] == [2, 3]
    assert during.evidence[-1].start_s == 6.0 and during.evidence[-1].end_s == 6.5

    # Progress comes as commits are noticed (when frames arrive), so counts rise but may skip.
    counts = [p.chunks_committed for p in progress[:-1]]
    assert counts and counts == sorted(set(counts)) and counts[-1] <= 5
    final = progress[-1]
    assert (
        final.done
        and final.frames_received == 40
        and final.frames_sampled == 20
        and final.frames_dropped == 0
    )
    assert final.chunks_committed == 5 and final.position_s == 9.75
    info = final.stream
    assert info.state == pb.STREAM_STATE_READY and info.source == "live:grpc"
    assert (info.chunks, info.frames_decoded, info.frames_sampled, info.duration_s) == (5, 40, 20, 10.0)
    assert 0 < info.tokens_kept <= info.tokens_seen
    spans = server.store.chunk_spans("grpc-cam")
    assert [(s.start_s, s.end_s) for s in spans] == [
        (0.0, 2.0),
        (2.0, 4.0),
        (4.0, 6.0),
        (6.0, 8.0),
        (8.0, 10.0),
    ]
    after = client.ask("grpc-cam", "What happened?", top_k=2, max_new_tokens=2)
    assert len(after.evidence) == 2  # ready again: top-k only


# --- reconnects and restarts ----------------------------------------------------------------


def test_reconnect_continues_chunks_time_and_diffp_also_after_a_restart(
    server: LongWatchServer,
    client: LongWatchClient,
    bikes: list[np.ndarray],
    state_dir: Path,
    module_redis: EmbeddedRedis,
) -> None:
    """One still frame, sent over three connections: DiffFP keeps all of it once, then one token a frame."""
    still = bikes[0]
    first = last(client.ingest_frames("porch", timed([still] * 6, 0.5)))
    tpf = first.stream.tokens_seen // first.stream.frames_sampled
    assert (first.stream.chunks, first.stream.tokens_kept, first.stream.frames_kept) == (2, tpf + 5, 1)

    # The sender's clock restarted somewhere else: stream time continues where the stream ended.
    second = last(client.ingest_frames("porch", timed([still] * 6, 0.5, start=1000.0)))
    assert second.chunks_committed == 2 and second.stream.chunks == 4
    # Not a stream start: the first frame after the reconnect kept 1 token, like the others.
    assert (second.stream.tokens_kept, second.stream.frames_kept) == (tpf + 5 + 6, 1)
    spans = [(s.index, s.start_s, s.end_s) for s in server.store.chunk_spans("porch")]
    assert spans == [(0, 0.0, 2.0), (1, 2.0, 3.0), (2, 3.0, 5.0), (3, 5.0, 6.0)]
    assert server.store.get_chunk("porch", 2).frame_times == [3.0, 3.5, 4.0, 4.5]

    # A killed process leaves the stream LIVE; the next start settles it and continues from Redis.
    server.store.set_state("porch", StreamState.LIVE)
    with (
        LongWatchServer(make_settings(state_dir, module_redis.url)) as restarted,
        LongWatchClient(f"127.0.0.1:{restarted.port}", timeout=60) as c2,
    ):
        assert c2.get_stream("porch").state == "ready"
        third = last(c2.ingest_frames("porch", timed([still] * 2, 0.5)))
        assert (third.stream.chunks, third.stream.tokens_kept, third.stream.frames_kept) == (
            5,
            tpf + 5 + 6 + 2,
            1,
        )
        assert c2.ask("porch", "Anything new?", max_new_tokens=2).evidence
    assert [(s.start_s, s.end_s) for s in server.store.chunk_spans("porch")][-1] == (6.0, 7.0)

    assert b"lw:{porch}:ingest" in stream_keys(module_redis.url, "porch")
    assert client.delete_stream("porch") > 0
    assert stream_keys(module_redis.url, "porch") == set()


# --- several streams at once, `longwatch stream`, the Python WebRTC sender ------------------


def test_longwatch_stream_of_a_real_clip_beside_other_live_streams(
    server: LongWatchServer,
    client: LongWatchClient,
    bikes: list[np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """bikes.mp4 over WebRTC by the CLI, a test pattern over WebRTC and frames over gRPC, at once."""
    http = f"127.0.0.1:{server.http_port}"
    results: dict[str, Any] = {}

    def grpc_feed() -> None:
        def paced() -> Iterator[LiveFrame]:
            for frame in timed(bikes[::-1][:20], 0.5):
                time.sleep(0.1)
                yield frame

        results["side"] = last(client.ingest_frames("side", paced()))

    def pattern() -> None:
        results["pattern"] = send_video(
            http, open_source(test_pattern=True), "pattern", seconds=3.0, ice_addresses=LOOPBACK
        )

    workers = [threading.Thread(target=grpc_feed), threading.Thread(target=pattern)]
    for w in workers:
        w.start()
    code = main.main(
        ["stream", str(real_clip("bikes.mp4")), "--stream", "bikes-live", "--http-server", http]
        + ["--ice-address", "127.0.0.1"]
    )
    for w in workers:
        w.join(timeout=60)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "bikes-live: sent" in out and "(done)" in out and "state ready" in out

    live = client.get_stream("bikes-live")
    assert live.state == "ready" and live.source == "live:webrtc"
    assert live.frames_decoded >= 200  # 250 frames in the clip; the first and last may not make it
    assert live.frames_sampled >= 17 and live.frames_dropped == 0
    assert live.chunks >= 5 and 8.5 <= live.duration_s <= 10.5
    assert 0 < live.frames_kept <= live.frames_sampled

    side = results["side"].stream
    assert (side.frames_decoded, side.frames_sampled, side.chunks, side.duration_s) == (20, 20, 5, 10.0)
    pattern_result = results["pattern"]
    assert pattern_result.frames_sent >= 30 and pattern_result.stream["state"] == "ready"
    assert pattern_result.stream["chunks"] >= 1 and pattern_result.stream["frames_sampled"] >= 4
    # Each stream holds only its own chunks (a chunk blob names its stream and index).
    for sid in ("bikes-live", "side", "pattern"):
        spans = server.store.chunk_spans(sid)
        chunks = server.store.get_chunks(sid, [s.index for s in spans])
        assert [c.stream_id for c in chunks] == [sid] * len(spans)
        assert [c.index for c in chunks] == list(range(len(spans)))
    assert client.ask("bikes-live", "Who rides past?", max_new_tokens=2).evidence


# --- WebRTC stays on loopback ---------------------------------------------------------------


async def connect_aiortc_peer(base: str, stream_id: str) -> tuple[str, Any, str]:
    """A loopback aiortc sender connected to the service: (the answer's SDP, the pair, the stream id)."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from longwatch.clients.webrtc import TestPatternTrack

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(TestPatternTrack(64, 48), direction="sendonly")
    try:
        await set_local_description(pc, await pc.createOffer(), LOOPBACK)
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "stream_id": stream_id}
        status, answer = await asyncio.to_thread(http_json, base, "POST", "/offer", body)
        assert status == 200, answer
        sdp = restrict_remote_sdp(answer["sdp"], LOOPBACK)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        deadline = time.monotonic() + 30
        while pc.connectionState != "connected":
            assert pc.connectionState not in ("failed", "closed") and time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # a few frames, so that the stream is kept
        return answer["sdp"], selected_pair(pc), answer["stream_id"]
    finally:
        await pc.close()


def test_webrtc_uses_loopback_only_at_both_ends(
    server: LongWatchServer, client: LongWatchClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The service restricted to 127.0.0.1 answers with 127.0.0.1 candidates only, connects over a
    loopback pair, and refuses an offer whose candidates are all elsewhere."""
    caplog.set_level(logging.INFO, logger="longwatch.stream.webrtc")
    base = f"http://127.0.0.1:{server.http_port}"
    answer, pair, stream_id = asyncio.run(connect_aiortc_peer(base, "loopback-rtc"))
    assert stream_id == "loopback-rtc"
    assert candidate_hosts(answer) and set(candidate_hosts(answer)) == {"127.0.0.1"}
    assert pair is not None and (pair[0][0], pair[1][0]) == ("127.0.0.1", "127.0.0.1")
    wait_until(lambda: client.get_stream("loopback-rtc").state == "ready", 30, "the stream to end")
    pairs = connected_pairs(caplog, "loopback-rtc")
    assert len(pairs) == 1 and is_loopback_pair(pairs[0]), pairs
    # The service's end of the pair is the sender's remote end, and the other way round.
    assert pairs[0] == f"127.0.0.1:{pair[1][1]} <- 127.0.0.1:{pair[0][1]}"

    elsewhere = asyncio.run(_real_offer()).replace(" 127.0.0.1 ", " 192.0.2.1 ")
    code, refused = http_json(base, "POST", "/offer", {"sdp": elsewhere, "type": "offer", "stream_id": "far"})
    assert code == 400 and "cannot connect to this service" in refused["error"], refused
    assert "192.0.2.1" in refused["error"] and "far" not in {s.stream_id for s in client.list_streams()}


# --- the browser page in headless Chromium --------------------------------------------------


# The page's connection as Chromium sees it: the selected candidate pair and every remote candidate.
PAGE_ICE_SCRIPT = """
const done = arguments[arguments.length - 1];
(async () => {
  const stats = new Map();
  (await pc.getStats()).forEach((s) => stats.set(s.id, s));
  const address = (id) => (stats.get(id) || {}).address;
  const all = [...stats.values()];
  const transport = all.find((s) => s.type === "transport" && s.selectedCandidatePairId);
  const pair = transport ? stats.get(transport.selectedCandidatePairId) : null;
  return {
    local: pair ? address(pair.localCandidateId) : null,
    remote: pair ? address(pair.remoteCandidateId) : null,
    remotes: all.filter((s) => s.type === "remote-candidate").map((s) => s.address),
  };
})().then(done, (e) => done({ error: String(e) }));
"""


def connected_pairs(caplog: pytest.LogCaptureFixture, stream_id: str) -> list[str]:
    """The ICE pairs the service logged for a stream's connections ("local <- remote")."""
    prefix = f"live stream {stream_id}: WebRTC connected, ICE pair "
    return [r.getMessage()[len(prefix) :] for r in caplog.records if r.getMessage().startswith(prefix)]


def is_loopback_pair(pair: str) -> bool:
    return re.fullmatch(r"127\.0\.0\.1:\d+ <- 127\.0\.0\.1:\d+", pair) is not None


def test_browser_page_sends_the_camera_and_asks(
    server: LongWatchServer, client: LongWatchClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    caplog.set_level(logging.INFO, logger="longwatch.stream.webrtc")
    driver = chromium_driver()
    try:
        driver.get(f"http://127.0.0.1:{server.http_port}/?stream=browser-cam")
        driver.find_element(By.ID, "start").click()
        WebDriverWait(driver, 30).until(lambda d: int(d.find_element(By.ID, "frames-sent").text or 0) >= 60)
        assert driver.find_element(By.ID, "current-stream").text == "browser-cam"
        # Both ends of the pair in use are loopback, as the service also logged.
        page_ice = driver.execute_async_script(PAGE_ICE_SCRIPT)
        assert (page_ice["local"], page_ice["remote"]) == ("127.0.0.1", "127.0.0.1"), page_ice
        assert set(page_ice["remotes"]) == {"127.0.0.1"}, page_ice  # the answer offered nothing else
        pairs = connected_pairs(caplog, "browser-cam")
        assert len(pairs) == 1 and is_loopback_pair(pairs[0]), pairs
        wait_until(lambda: client.get_stream("browser-cam").chunks >= 1, 30, "a committed chunk")
        assert client.get_stream("browser-cam").state == "live"

        driver.find_element(By.ID, "question").send_keys("What is on camera?")
        driver.find_element(By.ID, "ask").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#evidence li"))
        spans = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#evidence li")]
        assert spans and all(" – " in s and "score" in s for s in spans)
        assert driver.find_element(By.ID, "answer").text  # an answer (or the blank-answer note) is shown
        driver.save_screenshot(str(tmp_path / "page-live.png"))

        driver.find_element(By.ID, "stop").click()
        wait_until(lambda: client.get_stream("browser-cam").state == "ready", 30, "the stream to end")
    finally:
        driver.quit()
    info = client.get_stream("browser-cam")
    assert info.source == "live:webrtc" and info.frames_decoded >= 60
    assert info.chunks >= 1 and 0 < info.frames_kept <= info.frames_sampled
    listed = {s.stream_id: s for s in client.list_streams()}
    assert listed["browser-cam"].frames_kept == info.frames_kept


# --- bad input ------------------------------------------------------------------------------


def call_error(client: LongWatchClient, requests: list[pb.IngestFramesRequest]) -> LongWatchError:
    """Send these IngestFrames messages as they are; returns the error the call ended with."""
    with grpc.insecure_channel(client.target) as channel:
        stub = pb_grpc.LongWatchStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.IngestFrames(iter(requests), timeout=30))
    return LongWatchError(err.value.details(), err.value.code())


def bad_call(
    client: LongWatchClient, stream_id: str, bad: LiveFrame | pb.IngestFramesRequest, good: list[LiveFrame]
) -> LongWatchError:
    """Send `start`, the good frames, then one bad message; returns the error the call ended with."""
    messages = [pb.IngestFramesRequest(start=pb.LiveStart(stream_id=stream_id))]
    messages += [pb.IngestFramesRequest(frame=f.to_proto()) for f in good]
    messages.append(
        bad if isinstance(bad, pb.IngestFramesRequest) else pb.IngestFramesRequest(frame=bad.to_proto())
    )
    return call_error(client, messages)


def test_bad_input_gets_clear_errors_and_leaves_other_streams_alone(
    server: LongWatchServer, client: LongWatchClient, bikes: list[np.ndarray]
) -> None:
    steady: dict[str, pb.LiveProgress] = {}

    def feed_steady() -> None:
        def paced() -> Iterator[LiveFrame]:
            for frame in timed(bikes[:30], 0.5):
                time.sleep(0.05)
                yield frame

        steady["final"] = last(client.ingest_frames("steady", paced()))

    feeder = threading.Thread(target=feed_steady)
    feeder.start()
    wait_until(lambda: server.service.live.is_live("steady"), 10, "the steady stream")

    good = timed(bikes[:3], 0.5)
    small = np.zeros((48, 64, 3), np.uint8)
    cases = [
        (
            pb.IngestFramesRequest(
                frame=pb.Frame(timestamp_s=9, raw=pb.RawFrame(rgb=b"x", width=100000, height=100000))
            ),
            r"frame 4: frame size must be 1\.\.4096 pixels a side, got 100000x100000",
        ),
        (
            pb.IngestFramesRequest(
                frame=pb.Frame(timestamp_s=9, raw=pb.RawFrame(rgb=small.tobytes()[:-3], width=64, height=48))
            ),
            r"frame 4: raw frame of 64x48 needs 64\*48\*3 = 9216 bytes, got 9213",
        ),
        (
            LiveFrame(9.0, encoded=b"\x89PNG but not really"),
            r"frame 4: encoded frame \(19 bytes\) is not a decodable image",
        ),
        (
            LiveFrame(0.2, rgb=small),
            r"frame 4: frame timestamps must not go backwards: 0\.2 s came after 1 s",
        ),
        (pb.IngestFramesRequest(frame=pb.Frame(timestamp_s=9)), "frame 4: a frame needs an image"),
        (
            pb.IngestFramesRequest(start=pb.LiveStart(stream_id="again")),
            "only the first message may be `start`",
        ),
    ]
    for n, (bad, message) in enumerate(cases):
        err = bad_call(client, f"bad-{n}", bad, good)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, (n, err)
        assert "\n" not in err.message and re.search(message, err.message), (n, err.message)
        # What came before the bad frame is committed and stays.
        info = client.get_stream(f"bad-{n}")
        assert (info.state, info.frames_sampled, info.chunks) == ("ready", 3, 1), n

    no_start = call_error(client, [pb.IngestFramesRequest(frame=LiveFrame(0, rgb=small).to_proto())])
    assert no_start.code == grpc.StatusCode.INVALID_ARGUMENT and "must be `start`" in no_start.message
    # A call that names a new stream and sends no frame leaves nothing behind.
    assert not last(client.ingest_frames("no-frames", [])).HasField("stream")
    assert "no-frames" not in {s.stream_id for s in client.list_streams()}
    with pytest.raises(LongWatchError, match="stream id") as err:
        list(client.ingest_frames("has space", timed([small], 0.5)))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT

    # Ids that cannot take live frames: one fed by another connection, and an archive.
    with pytest.raises(LongWatchError, match="already being fed") as err:
        list(client.ingest_frames("steady", timed([small], 0.5)))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(LongWatchError, match="is live") as err:
        client.delete_stream("steady")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    list(client.ingest_file("an-archive", path=str(real_clip("carphone_pristine.mp4")), fps=1.0))
    with pytest.raises(LongWatchError, match="is an archive") as err:
        list(client.ingest_frames("an-archive", timed([small], 0.5)))
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS

    # WebRTC signalling: one-line JSON errors with fitting statuses.
    base = f"http://127.0.0.1:{server.http_port}"
    sdp = asyncio.run(_real_offer())
    http_cases = [
        ({"sdp": "this is not SDP", "type": "offer"}, 400, "no video track"),
        ({"sdp": "v=0\r\nm=video x", "type": "offer"}, 400, "malformed SDP offer"),
        ({"sdp": "v=0", "type": "answer"}, 400, "expected an SDP offer"),
        ({"sdp": sdp, "type": "offer", "stream_id": "a b"}, 400, "stream id"),
    ]
    for body, status, message in http_cases:
        code, answer = http_json(base, "POST", "/offer", body)
        assert code == status and message in answer["error"] and "\n" not in answer["error"], (body, answer)
    code, answer = http_json(base, "POST", "/offer", raw=b"{not json")
    assert code == 400 and answer["error"] == "request body must be a JSON object"
    code, answer = http_json(base, "GET", "/api/streams/nope")
    assert code == 404 and answer["error"] == "no stream 'nope'"
    code, answer = http_json(base, "POST", "/api/ask", {"stream_id": "steady", "question": "  "})
    assert code == 400 and answer["error"] == "question is empty"
    for margin, message in (
        ("5", "score_margin must be a number, got '5'"),
        (-1, "score_margin must be >= 0"),
    ):
        code, answer = http_json(
            base, "POST", "/api/ask", {"stream_id": "steady", "question": "What?", "score_margin": margin}
        )
        assert code == 400 and answer["error"].startswith(message), answer

    feeder.join(timeout=60)
    final = steady["final"]
    assert (final.frames_received, final.frames_sampled, final.frames_dropped) == (30, 30, 0)
    assert final.stream.chunks == 8 and final.stream.state == pb.STREAM_STATE_READY
    assert not any(s.stream_id.startswith("again") for s in client.list_streams())


def test_webrtc_offer_for_a_busy_or_archive_stream_is_refused(
    server: LongWatchServer, client: LongWatchClient
) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    sdp = asyncio.run(_real_offer())
    hold = threading.Event()

    def held() -> Iterator[LiveFrame]:
        yield LiveFrame(0.0, rgb=np.zeros((48, 64, 3), np.uint8))
        hold.wait(timeout=30)

    feeder = threading.Thread(target=lambda: list(client.ingest_frames("held", held())))
    feeder.start()
    try:
        wait_until(lambda: server.service.live.is_live("held"), 10, "the held stream")
        code, answer = http_json(base, "POST", "/offer", {"sdp": sdp, "type": "offer", "stream_id": "held"})
        assert code == 409 and "already being fed" in answer["error"]
    finally:
        hold.set()
        feeder.join(timeout=30)
    list(client.ingest_file("archived", path=str(real_clip("carphone_pristine.mp4")), fps=1.0))
    code, answer = http_json(base, "POST", "/offer", {"sdp": sdp, "type": "offer", "stream_id": "archived"})
    assert code == 409 and "is an archive" in answer["error"]


# --- backpressure ---------------------------------------------------------------------------


def test_a_live_stream_drops_when_the_model_is_busy_an_archive_waits(
    server: LongWatchServer, client: LongWatchClient, bikes: list[np.ndarray], tmp_path: Path
) -> None:
    """100 sampled frames arrive while the model is busy (the test holds its lock, as a long Ask
    would): the live stream keeps what its queue holds and drops and counts the rest; an archive
    of the same frames waits for the model and keeps every frame."""
    frames = (bikes * 3)[:100]
    queue_frames = server.settings.live.queue_frames
    lock = server.service.runner.lock
    progress: list[pb.LiveProgress] = []
    with lock.hold(ASK):
        feeder = threading.Thread(
            target=lambda: progress.extend(client.ingest_frames("busy-cam", timed(frames, 0.5)))
        )
        feeder.start()
        wait_until(lambda: server.service.live.is_live("busy-cam"), 10, "the live stream")
        session = server.service.live.get("busy-cam")
        wait_until(lambda: session.stats().frames_received == 100, 30, "all frames at the server")
    feeder.join(timeout=60)
    final = progress[-1]
    # The worker holds at most one chunk's frames while it waits; the queue holds the next ones.
    assert final.frames_dropped >= 100 - queue_frames - FRAMES_PER_CHUNK
    assert final.frames_sampled + final.frames_dropped == 100
    info = client.get_stream("busy-cam")
    assert info.frames_dropped == final.frames_dropped and info.frames_sampled == final.frames_sampled
    assert info.frames_decoded == 100 and info.chunks == -(-final.frames_sampled // FRAMES_PER_CHUNK)

    video = encode_video(tmp_path / "same-frames.mp4", iter(frames), fps=FPS)
    done = threading.Event()
    archive: list[pb.IngestProgress] = []

    def ingest() -> None:
        archive.extend(client.ingest_file("busy-archive", path=str(video), fps=FPS))
        done.set()

    with lock.hold(ASK):
        worker = threading.Thread(target=ingest)
        worker.start()
        assert not done.wait(timeout=1.0)  # it waits for the model instead of dropping
    worker.join(timeout=60)
    stored = archive[-1].stream
    assert archive[-1].done and (stored.frames_sampled, stored.frames_dropped, stored.chunks) == (100, 0, 25)
    table = [s for s in client.list_streams() if s.stream_id in ("busy-cam", "busy-archive")]
    assert [(s.stream_id, s.frames_dropped > 0) for s in table] == [
        ("busy-archive", False),
        ("busy-cam", True),
    ]


# --- stopping the service -------------------------------------------------------------------


def test_stopping_the_service_ends_live_streams_with_their_last_chunks_committed(
    state_dir: Path, module_redis: EmbeddedRedis, bikes: list[np.ndarray]
) -> None:
    """A second service on the same Redis is stopped while a WebRTC peer and an IngestFrames call feed it."""
    errors: dict[str, BaseException] = {}

    def paced() -> Iterator[LiveFrame]:
        for frame in timed(bikes * 10, 0.5):
            time.sleep(0.02)
            yield frame

    def run(name: str, fn: Callable[[], object]) -> threading.Thread:
        def target() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - inspected below
                errors[name] = e

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    srv = LongWatchServer(make_settings(state_dir, module_redis.url)).start()
    try:
        with LongWatchClient(f"127.0.0.1:{srv.port}") as c:
            threads = [
                run("grpc", lambda: list(c.ingest_frames("stop-grpc", paced()))),
                run(
                    "webrtc",
                    lambda: send_video(
                        f"127.0.0.1:{srv.http_port}",
                        open_source(test_pattern=True),
                        "stop-rtc",
                        ice_addresses=LOOPBACK,
                    ),
                ),
            ]
            wait_until(
                lambda: min(chunks_of(srv, "stop-grpc"), chunks_of(srv, "stop-rtc")) >= 1, 30, "chunks"
            )
            srv.stop()
            for t in threads:
                t.join(timeout=30)
    finally:
        srv.stop()
    assert isinstance(errors["grpc"], LongWatchError) and errors["grpc"].code == grpc.StatusCode.UNAVAILABLE
    assert "closed the connection" in str(errors["webrtc"])
    with open_store_for(module_redis.url) as store:
        for sid in ("stop-grpc", "stop-rtc"):
            record = store.get_stream(sid)
            assert record.state == StreamState.READY
            chunks = store.get_chunks(sid, [s.index for s in store.chunk_spans(sid)])
            assert sum(c.n_frames for c in chunks) == record.frames_sampled > 0  # nothing left pending

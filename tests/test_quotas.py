"""Tenants' quotas over real gRPC and HTTP on loopback: each limit refuses with RESOURCE_EXHAUSTED
(HTTP 429) naming itself, keeps what is stored, and touches no other tenant."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from service_settings import loopback_settings

from longwatch.clients.client import LiveFrame, LongWatchClient, LongWatchError, NotFound
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.train.synthetic import SyntheticFootage, write_video
from longwatch.proto.streams import StreamState
from longwatch.stream.auth import Caller, Role, create_key, set_limits
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import (
    SecuritySettings,
    TenantLimits,
)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(
        tmp_path_factory.mktemp("v") / "yard.mp4", seconds=48, fps=4, width=160, height=120, seed=1
    )


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "keys.json"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_redis: EmbeddedRedis, keys_file: Path
) -> Iterator[LongWatchServer]:
    create_key(keys_file, "bystander", Role.ADMIN)  # the file must exist when the server starts
    security = SecuritySettings(keys_file=keys_file, limits=TenantLimits(max_streams=50))  # the default
    settings = loopback_settings(
        tmp_path_factory.mktemp("state"),
        module_redis.url,
        workers=6,
        security=security,
    )
    with LongWatchServer(settings) as srv:
        yield srv


def tenant(server: LongWatchServer, keys_file: Path, name: str, **limits: float) -> LongWatchClient:
    """A client of a new tenant's admin, with these limits in the keys file (re-read by the server)."""
    _, key = create_key(keys_file, name, Role.ADMIN)
    if limits:
        set_limits(keys_file, name, limits)
    return LongWatchClient(f"127.0.0.1:{server.port}", timeout=60, api_key=key)


def held_open(
    footage: SyntheticFootage, held: threading.Event, release: threading.Event
) -> Iterator[LiveFrame]:
    """A live stream's first 4 frames, then `held` is set and the connection stays open until
    `release`: a live stream for as long as a test needs one."""
    for i in range(4):
        yield LiveFrame(i / 4, rgb=footage.frame_at(i))
    held.set()
    release.wait(60)


def wait_live(c: LongWatchClient, stream_id: str) -> None:
    """Until the stream is live: the frames a sender has handed to gRPC may not have reached the
    server yet, so at first the stream may not even exist."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if c.get_stream(stream_id).state == "live":
                return
        except NotFound:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{stream_id} did not become live in 10 s")


def exhausted(call: object) -> str:
    with pytest.raises(LongWatchError) as refused:
        call()  # type: ignore[operator]
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    assert "\n" not in str(refused.value)
    return str(refused.value)


def test_the_streams_limit_refuses_a_new_stream_until_one_is_deleted(
    server: LongWatchServer, keys_file: Path, video: Path
) -> None:
    with tenant(server, keys_file, "two", max_streams=2) as c, tenant(server, keys_file, "other") as other:
        list(c.ingest_file("a", path=video))
        list(c.ingest_frames("b", [LiveFrame(0.0, rgb=SyntheticFootage(seed=1).frame_at(0))]))
        message = exhausted(lambda: list(c.ingest_file("c", path=video)))
        assert message == "tenant two has 2 streams, its limit (max_streams): delete one first"
        exhausted(
            lambda: list(c.ingest_frames("c", [LiveFrame(0.0, rgb=SyntheticFootage(seed=1).frame_at(0))]))
        )
        assert {s.stream_id for s in c.list_streams()} == {"a", "b"}  # nothing half-made
        list(other.ingest_file("c", path=video))  # another tenant: the server's default of 50
        c.delete_stream("a")
        assert list(c.ingest_file("c", path=video))[-1].done


def test_the_stored_bytes_limit_stops_an_ingest_after_a_chunk_and_it_resumes_with_room(
    server: LongWatchServer, keys_file: Path, video: Path
) -> None:
    with tenant(server, keys_file, "bytes") as c:
        first = list(c.ingest_file("first", path=video))[-1].stream
        per_chunk = first.bytes_stored / first.chunks
        # Room for the first stream and two more chunks: the second stops after its second.
        set_limits(keys_file, "bytes", {"max_stored_gb": (first.bytes_stored + 1.5 * per_chunk) / 1e9})
        message = exhausted(lambda: list(c.ingest_file("second", path=video)))
        assert message.startswith("tenant bytes stores") and "(max_stored_gb)" in message
        second = c.get_stream("second")
        assert second.state == StreamState.INTERRUPTED and second.chunks == 2
        assert c.ask("second", "What appeared?").evidence  # what was committed answers
        exhausted(lambda: list(c.ingest_file("third", path=video)))  # at the limit: nothing new starts
        set_limits(keys_file, "bytes", {"max_stored_gb": 0})  # 0: the limit goes
        assert list(c.ingest_file("second", path=video, resume=True))[-1].stream.chunks == first.chunks


def test_the_live_streams_limit_refuses_a_second_connection_over_grpc_and_http(
    server: LongWatchServer, keys_file: Path
) -> None:
    footage = SyntheticFootage(seed=2, width=64, height=64, fps=4.0)
    held, release = threading.Event(), threading.Event()
    frames = held_open(footage, held, release)

    with tenant(server, keys_file, "onelive", max_live_streams=1) as c:
        feeder = threading.Thread(target=lambda: list(c.ingest_frames("porch", frames)))
        feeder.start()
        try:
            assert held.wait(30)
            wait_live(c, "porch")
            message = exhausted(
                lambda: list(c.ingest_frames("yard", [LiveFrame(0.0, rgb=footage.frame_at(0))]))
            )
            assert message == "tenant onelive has 1 live streams, its limit (max_live_streams)"
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.http_port}/offer",
                data=json.dumps({"sdp": "v=0", "type": "offer", "stream_id": "yard"}).encode(),
                headers={
                    "Authorization": f"Bearer {c.credentials.api_key}",
                    "Content-Type": "application/json",
                },
            )
            with pytest.raises(urllib.error.HTTPError) as http:
                urllib.request.urlopen(request, timeout=30)
            assert http.value.code == 429 and "max_live_streams" in json.loads(http.value.read())["error"]
        finally:
            release.set()
            feeder.join(60)
        list(c.ingest_frames("yard", [LiveFrame(0.0, rgb=footage.frame_at(0))]))  # the first one ended


def test_the_asks_limit_refuses_an_ask_beyond_it_at_once(
    server: LongWatchServer, keys_file: Path, video: Path
) -> None:
    with tenant(server, keys_file, "oneask", max_concurrent_asks=1) as c:
        list(c.ingest_file("cam", path=video))
        assert c.ask("cam", "What appeared?").evidence
        assert server.service is not None
        with server.service.quotas.asking(Caller("oneask", Role.READER)):  # an Ask in flight
            message = exhausted(lambda: c.ask("cam", "What appeared?"))
            assert "has 1 Asks running, its limit (max_concurrent_asks)" in message
            exhausted(lambda: list(c.ask_stream("cam", "What appeared?")))
            with tenant(server, keys_file, "asker2") as other:  # another tenant asks on
                list(other.ingest_file("cam", path=video))
                assert other.ask("cam", "What appeared?").evidence
        assert c.ask("cam", "What appeared?").evidence


def test_the_limits_hold_across_replicas(
    server: LongWatchServer, keys_file: Path, module_redis: EmbeddedRedis, tmp_path: Path, video: Path
) -> None:
    """A second replica on the same Redis and keys file counts the first one's Asks and live streams."""
    security = SecuritySettings(keys_file=keys_file, limits=TenantLimits(max_streams=50))
    other = LongWatchServer(loopback_settings(tmp_path / "b", module_redis.url, security=security)).start()
    footage = SyntheticFootage(seed=2, width=64, height=64, fps=4.0)
    held, release = threading.Event(), threading.Event()
    frames = held_open(footage, held, release)

    try:
        with tenant(server, keys_file, "replicated", max_concurrent_asks=1, max_live_streams=1) as a:
            key = a.credentials.api_key
            with LongWatchClient(f"127.0.0.1:{other.port}", timeout=60, api_key=key) as b:
                list(a.ingest_file("cam", path=video))
                assert server.service is not None
                with server.service.quotas.asking(Caller("replicated", Role.READER)):  # an Ask on A
                    assert "its limit (max_concurrent_asks)" in exhausted(
                        lambda: b.ask("cam", "What appeared?")
                    )
                assert b.ask("cam", "What appeared?").evidence  # A's Ask ended: its slot is free
                feeder = threading.Thread(target=lambda: list(a.ingest_frames("porch", frames)))
                feeder.start()
                try:
                    assert held.wait(30)
                    wait_live(b, "porch")
                    message = exhausted(
                        lambda: list(b.ingest_frames("yard", [LiveFrame(0.0, rgb=footage.frame_at(0))]))
                    )
                    assert message == "tenant replicated has 1 live streams, its limit (max_live_streams)"
                finally:
                    release.set()
                    feeder.join(60)
    finally:
        other.stop()

"""Several `longwatch serve` replicas on one Redis: any replica answers for any stream and follows
commits made on the others; one writer per stream (a lease in Redis, its fencing token on every
write); start-up clean-up leaves streams another replica holds; a replica killed mid-live-stream is
replaced by another for its sender. Real servers, real Redis, gRPC on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import build_chunk
from service_process import ServeProcess
from service_settings import loopback_settings

from longwatch.clients.client import LiveFrame, LongWatchClient, LongWatchError, Unavailable
from longwatch.memory.records import IngestCounters, LeaseHeld, LeaseLost
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.memory.store import open_store
from longwatch.model.train.synthetic import SyntheticFootage, write_video
from longwatch.proto.streams import StreamRecord, StreamState
from longwatch.stream.leases import settle_orphaned_streams
from longwatch.stream.server import LongWatchServer


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(
        tmp_path_factory.mktemp("v") / "yard.mp4", seconds=64, fps=2, width=160, height=120, seed=4
    )


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, module_redis: EmbeddedRedis
) -> Iterator[tuple[LongWatchServer, LongWatchServer]]:
    """Two replicas on one Redis, sweeping by hand (the interval is an hour)."""
    a = LongWatchServer(
        loopback_settings(tmp_path_factory.mktemp("a"), module_redis.url, retention_interval_s=3600)
    ).start()
    b = LongWatchServer(
        loopback_settings(tmp_path_factory.mktemp("b"), module_redis.url, retention_interval_s=3600)
    ).start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def frames(footage: SyntheticFootage, n: int, pause_s: float = 0.0, start: int = 0) -> Iterator[LiveFrame]:
    for i in range(start, start + n):
        if pause_s:
            time.sleep(pause_s)
        yield LiveFrame(i / 4.0, rgb=footage.frame_at(i))


def cited(client: LongWatchClient, stream_id: str) -> set[int]:
    """The chunks an Ask over every chunk cites."""
    return {e.chunk_index for e in client.ask(stream_id, "What appeared?", top_k=0).evidence}


def test_any_replica_answers_and_follows_commits_and_drops_made_on_another(
    replicas: tuple[LongWatchServer, LongWatchServer], video: Path
) -> None:
    a, b = replicas
    with (
        LongWatchClient(f"127.0.0.1:{a.port}", timeout=60) as on_a,
        LongWatchClient(f"127.0.0.1:{b.port}", timeout=60) as on_b,
    ):
        list(on_a.ingest_file("yard", path=video))
        assert "yard" in [s.stream_id for s in on_b.list_streams()]
        assert cited(on_b, "yard") == set(range(8))  # B built its index from Redis
        # A live stream fed through A: each chunk A acknowledges, B's next Ask cites.
        footage = SyntheticFootage(seed=5, width=160, height=120, fps=4.0)
        seen_after: list[float] = []
        for progress in on_a.ingest_frames("door", frames(footage, 48, pause_s=0.005), fps=1.0):
            if progress.chunks_committed and not progress.done:
                acked = time.perf_counter()
                assert progress.chunks_committed - 1 in cited(on_b, "door")
                seen_after.append(time.perf_counter() - acked)
        assert seen_after  # B saw every chunk on its first Ask after A acknowledged it
        # Retention applied on A: B no longer cites the dropped chunks.
        before = on_a.get_stream("yard")
        on_a.set_retention("yard", max_bytes=before.bytes_stored // 2)
        assert a.sweeper is not None
        a.sweeper.sweep()
        dropped = on_a.get_stream("yard").chunks_dropped
        assert dropped >= 3 and cited(on_b, "yard") == set(range(dropped, 8))


def test_one_writer_per_stream_across_replicas(
    replicas: tuple[LongWatchServer, LongWatchServer], video: Path
) -> None:
    a, b = replicas
    footage = SyntheticFootage(seed=6, width=160, height=120, fps=4.0)
    started = threading.Event()
    fed: list = []

    def feed_a() -> Iterator[LiveFrame]:
        for n, frame in enumerate(frames(footage, 200, pause_s=0.01)):
            if n == 10:
                started.set()
            yield frame

    with (
        LongWatchClient(f"127.0.0.1:{a.port}", timeout=60) as on_a,
        LongWatchClient(f"127.0.0.1:{b.port}", timeout=60) as on_b,
    ):
        feeder = threading.Thread(target=lambda: fed.extend(on_a.ingest_frames("porch", feed_a(), fps=2.0)))
        feeder.start()
        assert started.wait(30)
        with pytest.raises(Unavailable, match="being ingested by replica"):
            list(on_b.ingest_frames("porch", frames(footage, 4)))
        feeder.join(60)
        assert fed and fed[-1].done and on_b.get_stream("porch").state == "ready"
        # Once A let go, B may feed it: the stream goes on from A's last chunk.
        more = list(on_b.ingest_frames("porch", frames(footage, 16, start=200)))
        assert more[-1].stream.chunks > fed[-1].stream.chunks
        # An archive too: a second ingest of a stream id being ingested elsewhere is refused.
        assert b.leases is not None
        lease = b.leases.take("busy-archive")
        try:
            with pytest.raises(Unavailable, match="being ingested by replica"):
                list(on_a.ingest_file("busy-archive", path=video))
        finally:
            b.leases.release(lease)
        assert on_a.get_stream("yard")  # nothing of "busy-archive" was made meanwhile
        with pytest.raises(LongWatchError, match="does not exist|not found|no stream"):
            on_a.get_stream("busy-archive")


def test_a_writer_whose_lease_passed_on_cannot_write(redis_url: str) -> None:
    """Fencing: A's lease runs out while A stalls; B takes the stream; A's late writes are refused
    and change nothing, whatever they are."""
    store = open_store(redis_url)
    sid = "gate"
    store.create_stream(StreamRecord(stream_id=sid, state=StreamState.LIVE, source="live:grpc"))
    old = store.acquire_lease(sid, "replica-a", ttl_ms=200)
    store.commit_chunk(build_chunk(sid, 0), fence=old)
    with pytest.raises(LeaseHeld, match="being ingested by replica replica-a"):
        store.acquire_lease(sid, "replica-b", ttl_ms=5000)
    time.sleep(0.3)  # A stalls past its TTL without renewing
    new = store.acquire_lease(sid, "replica-b", ttl_ms=5000)
    assert new > old and not store.renew_lease(sid, "replica-a", old, 5000)
    for late in (
        lambda: store.commit_chunk(build_chunk(sid, 1), fence=old),
        lambda: store.put_ingest_state(sid, b"state", fence=old),
        lambda: store.set_state(sid, StreamState.READY, fence=old),
    ):
        with pytest.raises(LeaseLost, match="passed to replica replica-b"):
            late()
    assert store.retrieval_vectors(sid)[0] == [0] and store.get_ingest_state(sid) is None
    record = store.get_stream(sid)
    assert record is not None and record.state == StreamState.LIVE and record.chunks == 1
    store.commit_chunk(build_chunk(sid, 1), fence=new)  # the new writer goes on
    store.release_lease(sid, "replica-b", new)
    assert store.lease_holder(sid) is None
    store.close()


def test_start_up_settles_only_streams_whose_lease_ran_out(redis_url: str) -> None:
    store = open_store(redis_url)
    for sid, state in (
        ("held", StreamState.LIVE),
        ("orphan", StreamState.INGESTING),
        ("gone", StreamState.LIVE),
    ):
        store.create_stream(StreamRecord(stream_id=sid, state=state, source="live:grpc"))
    store.acquire_lease("held", "replica-a", ttl_ms=60_000)  # A is alive and feeds it
    store.acquire_lease("gone", "replica-c", ttl_ms=60_000)  # C's own, from before its restart
    store.add_counters("gone", IngestCounters(), pending=5)  # sampled frames not yet in a chunk
    settled = settle_orphaned_streams(store, "replica-c")
    assert settled == {"orphan": (StreamState.INTERRUPTED, 0), "gone": (StreamState.READY, 5)}
    assert store.get_stream("held").state == StreamState.LIVE  # type: ignore[union-attr]
    assert store.get_stream("gone").frames_lost == 5  # type: ignore[union-attr]
    store.close()


def test_a_live_stream_goes_on_on_another_replica_when_its_replica_is_killed(
    tmp_path: Path, module_redis: EmbeddedRedis
) -> None:
    """Two `serve` processes on one Redis, leases of 2 s; the sender is given both addresses. Its
    replica is killed mid-stream: it reconnects to the other, which takes the stream over once the
    lease ran out; every sampled frame is in a chunk or counted lost, and no chunk is doubled."""
    args = ("--redis-url", module_redis.url, "--lease-ttl", "2", "--fps", "2")
    first = ServeProcess(tmp_path / "a", *args).start()
    second = ServeProcess(tmp_path / "b", *args).start()
    footage = SyntheticFootage(seed=9, width=160, height=120, fps=4.0)
    progress: list = []
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            with LongWatchClient([first.target, second.target]) as client:
                progress.extend(
                    client.ingest_frames("porch", frames(footage, 500, pause_s=0.01), reconnect_s=60)
                )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    sender = threading.Thread(target=feed)
    sender.start()
    try:
        deadline = time.monotonic() + 60
        while (not progress or progress[-1].chunks_committed < 3) and time.monotonic() < deadline:
            time.sleep(0.05)
        at_kill = progress[-1].chunks_committed
        first.kill()
        first.wait()
        sender.join(120)
        assert not sender.is_alive() and not errors, errors
        final = progress[-1]
        assert final.done
        with LongWatchClient(second.target, timeout=60) as client:
            record = client.get_stream("porch")
        assert record.state == "ready" and final.stream.frames_lost == record.frames_lost
        r = redis.Redis.from_url(module_redis.url)
        indices = sorted(int(i) for i in r.hkeys("lw:{porch}:spans"))
        r.close()
        assert indices == list(range(record.chunks)) and record.chunks > 6  # no gap, nothing doubled
        store = open_store(module_redis.url)
        in_chunks = sum(c.n_frames for c in store.get_chunks("porch", indices))
        store.close()
        # Every sampled frame is in a chunk, or counted lost (those A held when it was killed).
        assert record.frames_sampled == in_chunks + record.frames_lost
        assert "live stream porch started" in second.output  # B fed it after A died
        assert record.chunks > at_kill + 3 and "Traceback" not in second.output
    finally:
        first.stop()
        second.stop()


def test_a_webrtc_sender_goes_on_through_another_replica_when_its_replica_is_killed(
    tmp_path: Path, module_redis: EmbeddedRedis
) -> None:
    """`longwatch stream`'s sender, given both replicas' HTTP addresses: its replica is killed
    mid-stream; it notices within a probe, offers to the other (refused with 503 until the dead
    one's 2-s lease runs out) and the same stream goes on there, its chunks in one run."""
    from longwatch.clients.webrtc import TestPatternTrack, WebRTCSender

    args = ("--redis-url", module_redis.url, "--lease-ttl", "2", "--fps", "2")
    first = ServeProcess(tmp_path / "a", *args).start()
    second = ServeProcess(tmp_path / "b", *args).start()
    servers = [f"127.0.0.1:{first.http_port}", f"127.0.0.1:{second.http_port}"]
    sender = WebRTCSender(
        servers, TestPatternTrack(96, 64, fps=8.0), "gate", ice_addresses=("127.0.0.1",), reconnect_s=60
    )
    results: list = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            results.append(asyncio.run(sender.run(seconds=40)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    try:
        with LongWatchClient(second.target, timeout=60) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not errors:
                with contextlib.suppress(LongWatchError):
                    if client.get_stream("gate").chunks >= 2:
                        break
                time.sleep(0.2)
            at_kill = client.get_stream("gate").chunks
            first.kill()
            first.wait()
            thread.join(120)
            assert not thread.is_alive() and not errors, errors
            result = results[0]
            assert result.reconnects == 1 and result.server.endswith(servers[1])
            record = client.get_stream("gate")
        assert record.state == "ready" and record.chunks >= at_kill + 4, (at_kill, record)
        assert result.stream["chunks"] == record.chunks
        r = redis.Redis.from_url(module_redis.url)
        indices = sorted(int(i) for i in r.hkeys("lw:{gate}:spans"))
        r.close()
        assert indices == list(range(record.chunks))  # no gap, nothing doubled
        assert "live stream gate started" in second.output and "Traceback" not in second.output
    finally:
        first.stop()
        second.stop()


def test_two_replicas_sweeping_the_same_chunks_to_the_cold_tier_lose_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    """Every replica runs the storage sweeper: two moving the same chunks at once write the same
    files, one swaps each chunk's pointer in, and the other's failed swap must not delete them."""
    from longwatch.memory.records import Picture
    from longwatch.memory.tier import LocalBlobTier

    stores = [open_store(redis_url, cold=LocalBlobTier(tmp_path / "cold")) for _ in range(2)]
    sid = "shared"
    stores[0].create_stream(StreamRecord(stream_id=sid))
    chunks = [build_chunk(sid, i) for i in range(12)]
    for c in chunks:
        stores[0].commit_chunk(c, pictures=[Picture(c.index, c.start_s, b"\xff\xd8" + bytes([c.index]))])
    moved: list[int] = []
    sweepers = [
        threading.Thread(target=lambda s=s: moved.append(s.move_to_cold(sid, range(12)))) for s in stores
    ]
    for t in sweepers:
        t.start()
    for t in sweepers:
        t.join()
    assert sum(moved) > 0
    for store in stores:  # every chunk and picture reads back from the tier on either replica
        got = store.get_chunks(sid, range(12))
        assert [g.index for g in got] == list(range(12))
        assert [p.image[2] for p in store.get_pictures(sid, 0, 1e9)] == list(range(12))
        store.close()

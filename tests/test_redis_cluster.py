"""longwatch on a real Redis Cluster: 3 masters and 3 replicas on loopback, started from the
redis-server binary the embedded default uses (tests/redis_cluster.py). A stream's keys share one
hash slot; a master killed mid-ingest is replaced by its replica and the ingest goes on."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import build_chunk
from redis.cluster import key_slot
from redis_cluster import ClusterNode, LocalRedisCluster
from service_settings import loopback_settings

from longwatch.clients.client import LongWatchClient
from longwatch.memory.records import Picture, StoreUnavailable
from longwatch.memory.store import RedisChunkStore, open_store
from longwatch.memory.tier import LocalBlobTier
from longwatch.model.train.synthetic import write_video
from longwatch.proto.streams import StreamRecord
from longwatch.stream.server import LongWatchServer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Some 60 chunks at the tests' 1 fps: an ingest long enough to kill a master in its middle."""
    return write_video(tmp_path_factory.mktemp("video") / "yard.mp4", 480, 2, 160, 120, seed=7)


def stream_keys(cluster: LocalRedisCluster, stream_id: str) -> list[bytes]:
    keys: list[bytes] = []
    for node in cluster.nodes:
        if node.alive and node.client().info("replication")["role"] == "master":
            keys += list(node.client().scan_iter(match=f"lw:{{{stream_id}}}:*"))
    return keys


def test_every_store_operation_works_on_a_cluster_with_a_stream_in_one_slot(
    cluster: LocalRedisCluster, tmp_path: Path
) -> None:
    store = open_store(cluster.url, cold=LocalBlobTier(tmp_path / "cold"))
    assert store.is_cluster
    sid = "acme~cam-1"
    try:
        store.create_stream(StreamRecord(stream_id=sid, source="file:yard.mp4"))
        chunks = [build_chunk(sid, i) for i in range(4)]
        for chunk in chunks:
            store.commit_chunk(chunk, pictures=[Picture(chunk.index, chunk.start_s, b"\xff\xd8jpeg")])
        assert store.commit_chunk(chunks[1]) == 0  # a replayed commit writes nothing, as on one Redis
        got = store.get_chunks(sid, [3, 0])
        assert [c.index for c in got] == [3, 0] and torch.equal(got[0].keys, chunks[3].keys)
        assert store.retrieval_vectors(sid)[0] == [0, 1, 2, 3]
        assert [s.stream_id for s in store.list_streams()] == [sid]
        assert store.move_to_cold(sid, [0, 1]) > 0
        assert torch.equal(store.get_chunk(sid, 0).values, chunks[0].values)
        assert [p.index for p in store.get_pictures(sid, 0, 1e9)] == [0, 1, 2, 3]
        assert store.drop_chunks(sid, [0]) > 0
        record = store.get_stream(sid)
        assert record is not None and record.chunks == 4 and record.chunks_dropped == 1
        keys = stream_keys(cluster, sid)
        assert len(keys) >= 8 and {key_slot(k) for k in keys} == {key_slot(f"lw:{{{sid}}}:stream".encode())}
        assert store.delete_stream(sid) > 0
        assert stream_keys(cluster, sid) == [] and store.get_stream(sid) is None
    finally:
        store.close()


def test_a_commit_that_must_reach_a_replica_fails_clearly_when_none_can(
    cluster: LocalRedisCluster, tmp_path: Path
) -> None:
    """--commit-replicas 1 with the master's replica stopped: UNAVAILABLE-class, naming the count;
    once the replica is back, the same commit goes through."""
    store = open_store(cluster.url, commit_replicas=1, commit_wait_ms=300)
    sid = "lonely"
    try:
        store.create_stream(StreamRecord(stream_id=sid))
        store.commit_chunk(build_chunk(sid, 0))  # a replica has it
        master = cluster.master_of(f"lw:{{{sid}}}:stream")
        replica = next(
            n
            for n in cluster.nodes
            if n.alive and n.client().info("replication").get("master_port") == master.port
        )
        replica.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable, match="0 of 1 replicas confirmed the commit within 300 ms"):
                store.commit_chunk(build_chunk(sid, 1))
        finally:
            replica.process.send_signal(signal.SIGCONT)
        assert store.commit_chunk(build_chunk(sid, 1)) == 0  # written before: the retry recognises it
        assert store.retrieval_vectors(sid)[0] == [0, 1]
        store.delete_stream(sid)
    finally:
        store.close()


def ingest_killing_the_master(
    client: LongWatchClient, cluster: LocalRedisCluster, footage: Path, stream_id: str
) -> tuple[ClusterNode, int]:
    """Ingest `footage`, SIGKILLing the master of the stream's slot once two chunks are acknowledged;
    returns the killed node and the chunks acknowledged by then."""
    killed, acked_at_kill = None, 0
    for progress in client.ingest_file(stream_id, path=footage):
        if killed is None and progress.chunks_committed >= 2:
            acked_at_kill = progress.chunks_committed
            killed = cluster.kill_master_of(f"lw:{{{stream_id}}}:stream")
    assert killed is not None
    return killed, acked_at_kill


def test_an_ingest_goes_on_when_its_master_is_killed(
    cluster: LocalRedisCluster, footage: Path, tmp_path: Path
) -> None:
    """The default (no WAIT): the replica takes over in about two node timeouts and the commits that
    failed meanwhile are made again; what asynchronous replication can lose is the last writes the
    dead master had not passed on yet (the README says so), so the count may fall short by those."""
    with (
        LongWatchServer(loopback_settings(tmp_path / "state", cluster.url)) as server,
        LongWatchClient(f"127.0.0.1:{server.port}", timeout=120) as client,
    ):
        reference = list(client.ingest_file("reference", path=footage))[-1].stream
        killed, acked_at_kill = ingest_killing_the_master(client, cluster, footage, "yard")
        cluster.wait_failover("lw:{yard}:stream", killed)
        yard = client.get_stream("yard")
        assert yard.state == "ready" and reference.chunks - 2 <= yard.chunks <= reference.chunks
        assert reference.chunks > acked_at_kill + 5  # the kill came early: most commits came after it
        assert client.ask("yard", "What appeared?").evidence
        cluster.restart(killed)
        cluster.wait_healthy()


def test_with_commit_replicas_a_killed_master_loses_no_acknowledged_chunk(
    cluster: LocalRedisCluster, footage: Path, tmp_path: Path
) -> None:
    """--commit-replicas 1: each chunk is on a replica before it is acknowledged, so the promoted
    replica holds every one. The new master has no replica until the killed node is back, so the
    commits wait (a restart here, an orchestrator's in production) and then the ingest goes on."""
    settings = loopback_settings(tmp_path / "state", cluster.url, commit_replicas=1)
    with (
        LongWatchServer(settings) as server,
        LongWatchClient(f"127.0.0.1:{server.port}", timeout=120) as client,
    ):
        reference = list(client.ingest_file("reference-confirmed", path=footage))[-1].stream
        killed: list[ClusterNode] = []

        def restart_after_failover() -> None:
            while not killed:
                time.sleep(0.05)
            cluster.wait_failover("lw:{cam}:stream", killed[0])
            cluster.restart(killed[0])

        helper = threading.Thread(target=restart_after_failover)
        helper.start()
        acked_at_kill = 0
        for progress in client.ingest_file("cam", path=footage):
            if not killed and progress.chunks_committed >= 2:
                acked_at_kill = progress.chunks_committed
                killed.append(cluster.kill_master_of("lw:{cam}:stream"))
        helper.join()
        cam = client.get_stream("cam")
        assert cam.state == "ready" and cam.chunks == reference.chunks > acked_at_kill + 5
        assert isinstance(server.store, RedisChunkStore)
        indices = list(range(reference.chunks))
        for got, want in zip(
            server.store.get_chunks("cam", indices),
            server.store.get_chunks("reference-confirmed", indices),
            strict=True,
        ):
            assert torch.equal(got.keys, want.keys) and torch.equal(got.values, want.values)
        assert client.ask("cam", "What appeared?").evidence
    cluster.wait_healthy()


def test_two_replicas_on_the_cluster_share_every_stream(
    cluster: LocalRedisCluster, footage: Path, tmp_path: Path
) -> None:
    """Replicas on a Redis Cluster: a stream ingested through A is answered by B (its index built
    from the cluster), and A's retention drops reach B's next Ask."""
    with (
        LongWatchServer(loopback_settings(tmp_path / "a", cluster.url, retention_interval_s=3600)) as a,
        LongWatchServer(loopback_settings(tmp_path / "b", cluster.url, retention_interval_s=3600)) as b,
        LongWatchClient(f"127.0.0.1:{a.port}", timeout=120) as on_a,
        LongWatchClient(f"127.0.0.1:{b.port}", timeout=120) as on_b,
    ):
        assert isinstance(b.store, RedisChunkStore) and b.store.is_cluster
        made = list(on_a.ingest_file("shared", path=footage))[-1].stream
        cited = {e.chunk_index for e in on_b.ask("shared", "What appeared?", top_k=0).evidence}
        assert cited == set(range(made.chunks))
        on_a.set_retention("shared", max_bytes=on_a.get_stream("shared").bytes_stored // 2)
        assert a.sweeper is not None
        a.sweeper.sweep()
        dropped = on_b.get_stream("shared").chunks_dropped
        cited = {e.chunk_index for e in on_b.ask("shared", "What appeared?", top_k=0).evidence}
        assert dropped > 0 and cited == set(range(dropped, made.chunks))

"""The embedded redis-server: lifecycle, persistence across restarts and crashes, socket paths, locking."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from longwatch.memory.index import IndexRegistry
from longwatch.memory.records import IngestCounters
from longwatch.memory.redis_server import EmbeddedRedis, EmbeddedRedisError, find_redis_server
from longwatch.memory.store import open_store
from longwatch.proto.streams import StreamRecord, StreamState


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def new_server():
    """EmbeddedRedis instances that are stopped at teardown even when an assertion fails first."""
    made: list[EmbeddedRedis] = []

    def make(data_dir: Path, **kwargs) -> EmbeddedRedis:
        made.append(EmbeddedRedis(data_dir, **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.stop(timeout=2.0)


def test_find_redis_server_gives_an_executable() -> None:
    path = find_redis_server()
    assert os.path.isfile(path) and os.access(path, os.X_OK)


def test_start_serves_a_unix_socket_with_persistence_and_stop_reaps(tmp_path, new_server) -> None:
    server = new_server(tmp_path / "data")
    url = server.start()
    pid = server.pid
    assert url.startswith("unix://") and server.running and server.start() == url  # start is idempotent
    client = redis.Redis.from_url(url, decode_responses=True)
    config = client.config_get("*")
    assert config["port"] == "0"  # no TCP listener
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
    assert config["save"] and config["dir"] == str(tmp_path / "data")
    client.close()

    server.stop()
    assert not server.running and not pid_alive(pid)  # reaped, not a zombie
    server.stop()  # idempotent
    with pytest.raises(EmbeddedRedisError):
        _ = server.url
    assert (tmp_path / "data" / "dump.rdb").exists()  # SHUTDOWN SAVE wrote the snapshot
    log = server.log_tail(50)
    assert "ready to accept connections" in log
    assert "User requested shutdown" in log and "Received SIGTERM" not in log  # stopped by SHUTDOWN SAVE


def test_restart_keeps_everything_and_rebuilds_the_same_index(tmp_path, make_chunk) -> None:
    data_dir = tmp_path / "state"
    query = torch.randn(16, generator=torch.Generator().manual_seed(1)).numpy()
    with EmbeddedRedis(data_dir) as server, open_store(server.url) as store:
        store.create_stream(StreamRecord(stream_id="cam", source="bikes.mp4", fps=1.0, model="tiny"))
        store.create_stream(StreamRecord(stream_id="other"))
        for i in range(5):
            store.commit_chunk(make_chunk("cam", i, dtype=torch.bfloat16), IngestCounters(frames_sampled=8))
        store.commit_chunk(make_chunk("other", 0))
        store.set_state("cam", StreamState.READY)
        before = (store.list_streams(), store.chunk_spans("cam"), store.retrieval_vectors("cam"))
        chunks_before = store.get_chunks("cam", range(5))
        hits_before = IndexRegistry(store).search("cam", query, 3)
        hits_allowed_before = IndexRegistry(store).search("cam", query, 2, {0, 1, 4})

    with EmbeddedRedis(data_dir) as server, open_store(server.url) as store:
        assert store.list_streams() == before[0]
        assert store.get_stream("cam").state is StreamState.READY
        assert store.get_stream("cam").frames_sampled == 40
        assert store.chunk_spans("cam") == before[1]
        ids, vectors = store.retrieval_vectors("cam")
        assert ids == before[2][0] and np.array_equal(vectors, before[2][1])
        for a, b in zip(store.get_chunks("cam", range(5)), chunks_before, strict=True):
            assert (
                torch.equal(a.keys, b.keys)
                and a.keys.dtype == torch.bfloat16
                and a.frame_times == b.frame_times
            )
        registry = IndexRegistry(store)  # a restarted service rebuilds its indexes from Redis
        assert registry.search("cam", query, 3) == hits_before
        assert registry.search("cam", query, 2, {0, 1, 4}) == hits_allowed_before


def test_writes_survive_a_killed_server_through_the_aof(tmp_path, new_server) -> None:
    # No RDB save point fires in this test, so only the AOF can bring the key back.
    data_dir = tmp_path / "d"
    server = new_server(data_dir)
    client = redis.Redis.from_url(server.start())
    client.set("lw:probe", b"still here")
    client.close()
    os.kill(server.pid, signal.SIGKILL)
    while server.running:  # dead, as after a crash
        time.sleep(0.01)
    server.stop()  # still reaps and releases the lock without complaint
    assert not (data_dir / "dump.rdb").exists()
    with EmbeddedRedis(data_dir) as again:
        client = redis.Redis.from_url(again.url)
        assert client.get("lw:probe") == b"still here"
        client.close()
        os.kill(again.pid, signal.SIGKILL)  # crashes again: start() on the same object recovers
        while again.running:
            time.sleep(0.01)
        client = redis.Redis.from_url(again.start())
        assert client.get("lw:probe") == b"still here"
        client.close()


def test_long_data_dir_falls_back_to_a_short_socket_path(tmp_path) -> None:
    data_dir = tmp_path / ("deep-" * 30) / "state"
    assert len(str(data_dir)) > 107
    with EmbeddedRedis(data_dir) as server:
        socket_path = server.socket_path
        assert len(os.fsencode(socket_path)) <= 100 and data_dir not in socket_path.parents
        client = redis.Redis.from_url(server.url)
        client.set("k", b"v")
        assert client.ping()
        client.close()
    assert not socket_path.parent.exists()  # the temp socket dir is cleaned up
    assert (data_dir / "appendonly.aof").exists() and (data_dir / "redis.log").exists()


def test_a_data_dir_in_use_is_refused(tmp_path) -> None:
    with EmbeddedRedis(tmp_path / "shared") as first:
        second = EmbeddedRedis(tmp_path / "shared")
        with pytest.raises(
            EmbeddedRedisError, match=f"in use by longwatch pid {os.getpid()} .*pid {first.pid}"
        ):
            second.start()
        assert first.running and redis.Redis.from_url(first.url).ping()
    with EmbeddedRedis(tmp_path / "shared") as third:  # released after stop
        assert third.running


_START_AND_DIE = """
import os, sys
from longwatch.memory.redis_server import EmbeddedRedis
server = EmbeddedRedis(sys.argv[1], die_with_owner=sys.argv[2] == "1")
url = server.start()
import redis
redis.Redis.from_url(url).set("kept", b"yes")
print(server.pid, flush=True)
if sys.argv[3] == "exit":
    os._exit(0)  # as if killed: nothing stops the child
sys.stdin.read()
"""


def _start_in_a_process(data_dir: Path, die_with_owner: bool, end: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _START_AND_DIE, str(data_dir), "1" if die_with_owner else "0", end],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, int(proc.stdout.readline())


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_the_server_stops_when_the_service_is_killed(tmp_path: Path) -> None:
    owner, redis_pid = _start_in_a_process(tmp_path / "data", die_with_owner=True, end="wait")
    owner.kill()  # kill -9: the service cannot stop its child
    owner.wait()
    assert _gone(redis_pid)  # the kernel told it to (PR_SET_PDEATHSIG), and it shut down
    with EmbeddedRedis(tmp_path / "data") as again:  # the folder is free, the data intact
        assert redis.Redis.from_url(again.url).get("kept") == b"yes"


def test_a_server_left_behind_is_stopped_and_its_folder_taken_over(tmp_path: Path) -> None:
    owner, redis_pid = _start_in_a_process(tmp_path / "data", die_with_owner=False, end="exit")
    owner.wait()
    assert not _gone(redis_pid, timeout=0.5)  # an orphan, still holding the folder's lock
    with EmbeddedRedis(tmp_path / "data") as again:
        assert _gone(redis_pid) and again.pid != redis_pid
        assert redis.Redis.from_url(again.url).get("kept") == b"yes"  # saved on its way out


def test_a_server_that_dies_at_start_reports_its_log(tmp_path, new_server) -> None:
    bogus = tmp_path / "fake-redis-server"
    bogus.write_text("#!/bin/sh\necho 'FATAL: cannot start, out of imagination' >&2\nexit 3\n")
    bogus.chmod(0o755)
    server = new_server(tmp_path / "data", binary=str(bogus))
    started = time.monotonic()
    with pytest.raises(EmbeddedRedisError, match=r"(?s)exited with code 3.*out of imagination"):
        server.start()
    assert time.monotonic() - started < 5 and not server.running
    with EmbeddedRedis(tmp_path / "data") as real:  # the failed start released the lock
        assert real.running


def test_stop_escalates_when_shutdown_is_refused(tmp_path, new_server) -> None:
    server = new_server(tmp_path / "data")
    client = redis.Redis.from_url(server.start())
    client.config_set("dir", "/proc")  # the final save cannot be written: SHUTDOWN SAVE fails
    pid = server.pid
    started = time.monotonic()
    server.stop(timeout=0.5)  # SHUTDOWN is refused, so is SIGTERM (same failing save): it takes SIGKILL
    assert not pid_alive(pid) and time.monotonic() - started < 3
    assert "can't exit" in server.log_tail()
    client.close()


def test_paths_with_spaces_and_quotes(tmp_path) -> None:
    with EmbeddedRedis(tmp_path / 'my "state" dir') as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()
        assert Path(server.socket_path).exists()

"""Retention over the real service: oldest chunks leave Redis and the index together, Ask never
cites one, live streams go on, and what is in force (stream, tenant, server) and what went shows."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from service_settings import loopback_settings

from longwatch.clients.client import LiveFrame, LongWatchClient
from longwatch.memory.records import ChunkAge
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.train.synthetic import SyntheticFootage, write_video
from longwatch.stream.auth import Role, create_key, set_limits
from longwatch.stream.retention import Retention, chunks_to_drop
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import (
    LiveConfig,
    SecuritySettings,
    TenantLimits,
)


def test_chunks_to_drop_takes_the_too_old_then_the_oldest_over_the_bytes() -> None:
    ages = [ChunkAge(i, committed_unix=100.0 + 10 * i, bytes=1000) for i in range(6)]  # 100 ... 150
    assert chunks_to_drop(ages, Retention(), now=200.0) == []
    assert chunks_to_drop(ages, Retention(max_age_s=75), now=200.0) == [0, 1, 2]  # before 125
    assert chunks_to_drop(ages, Retention(max_bytes=2500), now=200.0) == [0, 1, 2, 3]
    assert chunks_to_drop(ages, Retention(max_age_s=75, max_bytes=2500), now=200.0) == [0, 1, 2, 3]
    assert chunks_to_drop(ages, Retention(max_age_s=95, max_bytes=4000), now=200.0) == [0, 1]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(
        tmp_path_factory.mktemp("v") / "yard.mp4", seconds=40, fps=4, width=160, height=120, seed=1
    )


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "keys.json"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_redis: EmbeddedRedis, keys_file: Path
) -> Iterator[LongWatchServer]:
    create_key(keys_file, "local", Role.ADMIN)
    settings = loopback_settings(
        tmp_path_factory.mktemp("state"),
        module_redis.url,
        retention_interval_s=0.1,
        live=LiveConfig(ice_addresses=("127.0.0.1",), recent_chunks=1),
        # The server's own default: 30 days, which nothing here reaches.
        security=SecuritySettings(keys_file=keys_file, limits=TenantLimits(retention_age_s=30 * 86400)),
    )
    with LongWatchServer(settings) as srv:
        yield srv


def client_of(server: LongWatchServer, keys_file: Path, tenant: str) -> LongWatchClient:
    return LongWatchClient(
        f"127.0.0.1:{server.port}", timeout=60, api_key=create_key(keys_file, tenant, Role.ADMIN)[1]
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_byte_limit_drops_the_oldest_chunks_everywhere_and_ask_cites_only_the_rest(
    server: LongWatchServer, keys_file: Path, video: Path, module_redis: EmbeddedRedis
) -> None:
    with client_of(server, keys_file, "bytes") as c:
        final = list(c.ingest_file("cam", path=video))[-1].stream
        assert final.chunks == 5 and final.retention_age_s == 30 * 86400  # the server's, in force
        per_chunk = final.bytes_stored // final.chunks
        kept = c.set_retention("cam", max_bytes=int(2.5 * per_chunk))
        assert kept.retention_bytes == int(2.5 * per_chunk) and kept.retention_age_s == 30 * 86400
        wait_for(lambda: c.get_stream("cam").chunks_dropped == 3, "three chunks dropped")
        s = c.get_stream("cam")
        assert (
            s.chunks == 5
            and s.bytes_stored <= 2.5 * per_chunk
            and s.bytes_dropped + s.bytes_stored == (final.bytes_stored)
        )
        for question in ("What appeared?", "When did it start?", "What colour was it?"):
            evidence = c.ask("cam", question, top_k=5).evidence
            assert evidence and {e.chunk_index for e in evidence} <= {3, 4}
        assert server.service is not None and set(server.service.indexes.get("bytes~cam")._ids) == {3, 4}
    raw = redis.Redis.from_url(module_redis.url)
    tag = "lw:{bytes~cam}"
    assert [raw.exists(f"{tag}:chunk:{i}") for i in range(5)] == [0, 0, 0, 1, 1]
    for name in ("vectors", "spans", "committed"):
        assert sorted(int(f) for f in raw.hkeys(f"{tag}:{name}")) == [3, 4], name
    raw.close()


def test_an_age_limit_drops_a_live_streams_old_chunks_while_it_goes_on(
    server: LongWatchServer, keys_file: Path
) -> None:
    footage = SyntheticFootage(seed=4, width=64, height=64, fps=2.0)
    keep_going = threading.Event()

    def frames() -> Iterator[LiveFrame]:
        i = 0
        while not keep_going.is_set() and i < 4000:
            yield LiveFrame(i / 2, rgb=footage.frame_at(i))
            i += 1
            time.sleep(0.005)

    with client_of(server, keys_file, "age") as c:
        set_limits(keys_file, "age", {"retention_days": 1.5 / 86400})  # the tenant's: 1.5 s
        feeder = threading.Thread(target=lambda: list(c.ingest_frames("porch", frames(), fps=2.0)))
        feeder.start()
        try:
            wait_for(lambda: "porch" in {s.stream_id for s in c.list_streams()}, "the live stream's record")
            wait_for(lambda: c.get_stream("porch").chunks_dropped >= 3, "chunks dropped while live")
            s = c.get_stream("porch")
            assert s.state == "live" and s.retention_age_s == 1.5  # the tenant's, over the server's
            held = s.chunks - s.chunks_dropped
            assert held >= 1 and c.ask("porch", "What is there?").evidence  # answers from what is kept
        finally:
            keep_going.set()
            feeder.join(60)
        wait_for(
            lambda: c.get_stream("porch").chunks == c.get_stream("porch").chunks_dropped, "all of it aged out"
        )


def test_the_cli_sets_and_shows_retention(server: LongWatchServer, keys_file: Path, video: Path) -> None:
    with client_of(server, keys_file, "cli") as c:
        list(c.ingest_file("cam", path=video))
        key = c.credentials.api_key
    base = [
        sys.executable,
        "-m",
        "longwatch.clients.main",
        "--server",
        f"127.0.0.1:{server.port}",
        "--api-key",
    ]
    run = subprocess.run([*base, str(key), "retention", "cam", "--days", "7", "--gb", "2"], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == "cam: retention 7 days, 2 GB\n"
    shown = subprocess.run([*base, str(key), "show", "cam"], capture_output=True, text=True, timeout=60)
    assert "retention: 7 days, 2 GB" in shown.stdout
    run = subprocess.run([*base, str(key), "retention", "cam"], capture_output=True, text=True, timeout=60)
    assert run.stdout == "cam: retention 30 days\n"  # its own gone: the server's again

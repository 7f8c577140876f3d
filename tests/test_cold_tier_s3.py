"""The cold tier on an S3-compatible store. No S3 can run here, so the store is moto's S3 server
(a fake of the S3 API, over real HTTP on loopback) and the client is boto3, as with a real one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_settings import loopback_settings

from longwatch.clients.client import LongWatchClient, Unavailable
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.train.synthetic import write_video
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import ServiceSettings

boto3 = pytest.importorskip("boto3", reason="the S3 cold tier needs boto3 (the s3 and dev extras)")
moto_server = pytest.importorskip("moto.server", reason="the fake S3 is moto's server (dev extra)")


@pytest.fixture(scope="module")
def fake_s3(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 on 127.0.0.1, with a bucket "cams"; yields its endpoint URL."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "fake",
        "AWS_SECRET_ACCESS_KEY": "fake",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch_module.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="cams")
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def s3_settings(tmp_path: Path, redis: EmbeddedRedis, prefix: str, endpoint: str) -> ServiceSettings:
    """A tiny hot window, swept by hand (the interval is an hour); the cold tier in bucket "cams"."""
    return loopback_settings(
        tmp_path / "state",
        redis.url,
        retention_interval_s=3600,
        hot_window_s=0.001,
        cold_s3=f"s3://cams/{prefix}",
        s3_endpoint=endpoint,
    )


def objects(endpoint: str, prefix: str) -> list[str]:
    listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="cams", Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_chunks_move_to_s3_answer_from_there_and_leave_with_their_stream(
    tmp_path: Path, module_redis: EmbeddedRedis, fake_s3: str
) -> None:
    video = write_video(tmp_path / "yard.mp4", seconds=24, fps=4, width=160, height=120, seed=3)
    with (
        LongWatchServer(s3_settings(tmp_path, module_redis, "longwatch", fake_s3)) as server,
        LongWatchClient(f"127.0.0.1:{server.port}", timeout=60) as c,
    ):
        list(c.ingest_file("yard", path=video))
        hot = c.ask("yard", "What appeared?", top_k=3)
        hot_frames = c.get_frames("yard", 0, 1e9)
        assert server.sweeper is not None
        server.sweeper.sweep()
        assert objects(fake_s3, "longwatch/stream-yard/") == sorted(
            f"longwatch/stream-yard/{i}.{kind}safetensors" for i in range(3) for kind in ("", "pictures.")
        )
        assert c.get_stream("yard").bytes_cold > 0
        cold = c.ask("yard", "What appeared?", top_k=3)
        assert (cold.answer, cold.evidence) == (hot.answer, hot.evidence)
        assert c.get_frames("yard", 0, 1e9) == hot_frames
        c.set_retention("yard", max_bytes=1)  # keeps nothing: every chunk goes, from S3 too
        server.sweeper.sweep()
        assert objects(fake_s3, "longwatch/stream-yard/") == []
        list(c.ingest_file("again", path=video))
        server.sweeper.sweep()
        assert len(objects(fake_s3, "longwatch/stream-again/")) == 6
        c.delete_stream("again")
        assert objects(fake_s3, "longwatch/stream-again/") == []


def test_an_s3_tier_that_cannot_be_reached_is_unavailable_in_one_line(
    tmp_path: Path, module_redis: EmbeddedRedis, fake_s3: str
) -> None:
    video = write_video(tmp_path / "yard.mp4", seconds=16, fps=4, width=160, height=120, seed=4)
    with (
        LongWatchServer(s3_settings(tmp_path, module_redis, "moved", fake_s3)) as server,
        LongWatchClient(f"127.0.0.1:{server.port}", timeout=60) as c,
    ):
        list(c.ingest_file("far", path=video))
        assert server.sweeper is not None
        server.sweeper.sweep()
        store = server.store
        assert store is not None and store.cold is not None
        # From here on the store is down: its client points at a port where nothing listens.
        store.cold._s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:1")  # type: ignore[attr-defined]
        with pytest.raises(Unavailable) as down:
            c.ask("far", "What appeared?")
        assert "the S3 cold tier s3://cams/moved failed to read a chunk" in str(down.value)
        assert "\n" not in str(down.value)

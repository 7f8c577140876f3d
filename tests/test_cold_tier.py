"""The cold tier: chunks past the hot window leave Redis for checksummed files, their pictures
with them; Ask and GetFrames read them there and answer as before, and retention, delete and damage
are handled. Real service, Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from service_settings import loopback_settings

from longwatch.clients.client import LongWatchClient, LongWatchError
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.train.synthetic import write_video
from longwatch.stream.server import LongWatchServer

QUESTIONS = ("What appeared?", "When did it appear?", "What colour was it?")


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(
        tmp_path_factory.mktemp("v") / "yard.mp4", seconds=40, fps=4, width=160, height=120, seed=2
    )


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_redis: EmbeddedRedis
) -> Iterator[LongWatchServer]:
    """A tiny hot window, swept by hand here (the interval is an hour), so each move is on cue."""
    settings = loopback_settings(
        tmp_path_factory.mktemp("state"),
        module_redis.url,
        retention_interval_s=3600,
        hot_window_s=0.001,
    )
    with LongWatchServer(settings) as srv:
        yield srv


def sweep(server: LongWatchServer) -> None:
    assert server.sweeper is not None
    server.sweeper.sweep()


def answers(c: LongWatchClient, stream_id: str) -> list[tuple[str, list[tuple[int, float]]]]:
    out = []
    for q in QUESTIONS:
        r = c.ask(stream_id, q, top_k=5)
        out.append((r.answer, [(e.chunk_index, e.score) for e in r.evidence]))
    return out


def test_cold_chunks_leave_redis_and_answer_exactly_as_hot_ones(
    server: LongWatchServer, video: Path, module_redis: EmbeddedRedis
) -> None:
    cold_dir = server.settings.state_dir / "cold"
    raw = redis.Redis.from_url(module_redis.url)
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        final = list(c.ingest_file("yard", path=video))[-1].stream
        hot = answers(c, "yard")
        hot_frames = c.get_frames("yard", 0, 1e9)
        hot_nearest = c.frame_at("yard", 17.3)
        used_hot = raw.memory_usage("lw:{yard}:chunk:0")
        assert len(hot_frames) == 5 and raw.hlen("lw:{yard}:pictures") == 5
        sweep(server)
        s = c.get_stream("yard")
        chunk_files = sorted((cold_dir / "stream-yard").glob("[0-9].safetensors"))
        picture_files = sorted((cold_dir / "stream-yard").glob("*.pictures.safetensors"))
        assert len(chunk_files) == len(picture_files) == 5
        assert sorted(p.name for p in (cold_dir / "stream-yard").iterdir()) == sorted(
            [f"{i}.safetensors" for i in range(5)] + [f"{i}.pictures.safetensors" for i in range(5)]
        )
        # What the stream counts cold: the chunk blobs and the picture images (their packing aside).
        images = sum(len(f.image) for f in hot_frames)
        assert s.bytes_stored == final.bytes_stored
        assert s.bytes_cold == sum(p.stat().st_size for p in chunk_files) + images
        assert not [
            raw.exists(f"lw:{{yard}}:chunk:{i}") for i in range(5) if raw.exists(f"lw:{{yard}}:chunk:{i}")
        ]
        assert raw.hlen("lw:{yard}:pictures") == 0 and raw.hlen("lw:{yard}:cold_pictures") == 5
        assert raw.hlen("lw:{yard}:vectors") == raw.hlen("lw:{yard}:spans") == raw.hlen("lw:{yard}:cold") == 5
        assert answers(c, "yard") == hot  # the same chunks, read from disk: the same answers
        assert c.get_frames("yard", 0, 1e9) == hot_frames  # the same pictures, read from disk
        assert c.frame_at("yard", 17.3) == hot_nearest
        assert [e.picture_times_s for e in c.ask("yard", "What appeared?", top_k=2).evidence]
        assert used_hot and raw.memory_usage("lw:{yard}:cold") < 5 * used_hot
        sweep(server)  # nothing left to move: a no-op
        assert c.get_stream("yard").bytes_cold == s.bytes_cold
    raw.close()


def test_a_damaged_cold_blob_is_data_loss_and_retention_and_delete_clean_the_tier(
    server: LongWatchServer, video: Path
) -> None:
    cold_dir = server.settings.state_dir / "cold"
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        for sid in ("damaged", "aging"):
            list(c.ingest_file(sid, path=video))
        sweep(server)
        for name in ("2.safetensors", "3.pictures.safetensors"):
            blob = cold_dir / "stream-damaged" / name
            blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
        with pytest.raises(LongWatchError) as lost:
            c.ask("damaged", "What appeared?", top_k=0)  # every chunk: chunk 2 among them
        assert lost.value.code == grpc.StatusCode.DATA_LOSS and "does not match its SHA-256" in str(
            lost.value
        )
        with pytest.raises(LongWatchError) as lost:
            c.get_frames("damaged", 0, 1e9)  # chunk 3's pictures among them
        assert lost.value.code == grpc.StatusCode.DATA_LOSS and "cold_pictures[3]" in str(lost.value)
        assert c.ask("aging", "What appeared?", top_k=0).evidence  # another stream is untouched
        before = c.get_stream("aging")
        c.set_retention("aging", max_bytes=before.bytes_stored // 2)
        sweep(server)
        after = c.get_stream("aging")
        files = list((cold_dir / "stream-aging").glob("[0-9].safetensors"))
        kept_frames = c.get_frames("aging", 0, 1e9)
        images = sum(len(f.image) for f in kept_frames)
        assert after.chunks_dropped >= 2 and after.bytes_cold == sum(p.stat().st_size for p in files) + images
        kept = sorted(int(p.name.split(".")[0]) for p in (cold_dir / "stream-aging").iterdir())
        # The dropped chunks' files (blob and pictures) went too.
        assert kept == sorted(2 * list(range(after.chunks_dropped, 5)))
        assert sorted({f.chunk_index for f in kept_frames}) == list(range(after.chunks_dropped, 5))
        c.delete_stream("damaged")
        assert not (cold_dir / "stream-damaged").exists()


def test_no_stream_id_reaches_outside_the_tier(tmp_path: Path) -> None:
    """The fuzzer found it: DeleteStream("..") once removed the whole state folder through the tier."""
    from longwatch.memory.tier import LocalBlobTier
    from longwatch.proto.streams import InvalidStreamId, validate_stream_id

    for dots in (".", ".."):
        with pytest.raises(InvalidStreamId, match="may not be"):
            validate_stream_id(dots)
    keep = tmp_path / "keep.txt"
    keep.write_text("the state folder's other files")
    tier = LocalBlobTier(tmp_path / "cold")
    for stored in ("..", ".", "acme~..", "..a"):
        tier.put(stored, 0, b"blob")
        assert tier.get(stored, 0) == b"blob"
        tier.delete_stream(stored)
        assert tier.get(stored, 0) is None
    assert keep.exists() and (tmp_path / "cold").is_dir()


def test_pictures_an_older_version_left_in_redis_follow_their_cold_chunk(
    server: LongWatchServer, video: Path, module_redis: EmbeddedRedis
) -> None:
    """Before pictures went cold, a chunk moved alone: the next sweep takes its pictures along."""
    cold_dir = server.settings.state_dir / "cold" / "stream-older"
    raw = redis.Redis.from_url(module_redis.url)
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        list(c.ingest_file("older", path=video))
        frames = c.get_frames("older", 0, 1e9)
        sweep(server)
        # Put the stream back as the older version left it: pictures in Redis, chunk blobs cold.
        raw.hset("lw:{older}:pictures", mapping={f"{f.chunk_index}:{f.time_s!r}": f.image for f in frames})
        raw.delete("lw:{older}:cold_pictures")
        raw.hincrby("lw:{older}:stream", "bytes_cold", -sum(len(f.image) for f in frames))
        for p in cold_dir.glob("*.pictures.safetensors"):
            p.unlink()
        before = c.get_stream("older")
        sweep(server)
        assert raw.hlen("lw:{older}:pictures") == 0 and raw.hlen("lw:{older}:cold_pictures") == 5
        assert len(list(cold_dir.glob("*.pictures.safetensors"))) == 5
        assert c.get_frames("older", 0, 1e9) == frames
        assert c.get_stream("older").bytes_cold == before.bytes_cold + sum(len(f.image) for f in frames)
    raw.close()


def test_a_pictures_blob_is_read_only_as_the_pictures_of_its_own_chunk() -> None:
    from longwatch.memory.records import CorruptData, Picture
    from longwatch.memory.serialization import pictures_from_bytes, pictures_to_bytes

    pictures = [Picture(4, 16.0, b"\xff\xd8jpeg-a"), Picture(4, 17.25, b"\xff\xd8jpeg-b")]
    blob = pictures_to_bytes(4, pictures)
    assert blob == pictures_to_bytes(4, pictures)  # deterministic bytes
    assert pictures_from_bytes(blob, index=4) == pictures
    with pytest.raises(CorruptData, match="not the pictures of chunk 5"):
        pictures_from_bytes(blob, index=5)
    for foreign in (b"", b"not safetensors at all", blob[:-3]):
        with pytest.raises(CorruptData):
            pictures_from_bytes(foreign, index=4)

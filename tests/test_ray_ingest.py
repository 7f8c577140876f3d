"""Archive ingest over Ray (`serve --ray local`, `ingest --ray`): two Ray actors on this machine
each hold the model and make segments of the file; the stream is the one-process ingest's,
chunk for chunk, and so are its counters, pictures and answers. Real Ray, Redis and gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from service_settings import loopback_settings

from longwatch.clients.client import LongWatchClient, LongWatchError
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.train.synthetic import write_video
from longwatch.stream.server import LongWatchServer

pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'longwatch[ray]'")

COUNTERS = (
    "chunks",
    "frames_decoded",
    "frames_sampled",
    "frames_kept",
    "tokens_seen",
    "tokens_kept",
    "bytes_stored",
)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 s at 1 fps: 19 chunks, the last one partial."""
    return write_video(
        tmp_path_factory.mktemp("v") / "yard.mp4", seconds=150, fps=4, width=160, height=120, seed=3
    )


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_redis: EmbeddedRedis
) -> Iterator[LongWatchServer]:
    settings = loopback_settings(
        tmp_path_factory.mktemp("state"), module_redis.url, ray_address="local", ray_workers=2
    )
    with LongWatchServer(settings) as srv:
        yield srv


def test_a_stream_made_over_ray_is_the_one_process_stream_chunk_for_chunk(
    server: LongWatchServer, video: Path
) -> None:
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=120) as client:
        list(client.ingest_file("plain", path=video))
        progress = list(client.ingest_file("rayed", path=video, ray=True))
        assert progress[-1].done and [p.chunks_committed for p in progress[:-1]] == list(range(1, 20))
        plain, rayed = client.get_stream("plain"), client.get_stream("rayed")
        assert rayed.state == "ready" and plain.chunks == 19
        assert [getattr(rayed, f) for f in COUNTERS] == [getattr(plain, f) for f in COUNTERS]
        store = server.store
        assert store is not None
        indices = list(range(plain.chunks))
        for a, b in zip(store.get_chunks("plain", indices), store.get_chunks("rayed", indices), strict=True):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
            assert torch.equal(a.retrieval, b.retrieval) and torch.equal(a.positions, b.positions)
            assert (a.start_s, a.end_s, a.frame_times, a.tokens_kept) == (
                b.start_s,
                b.end_s,
                b.frame_times,
                b.tokens_kept,
            )
        assert [(p.time_s, p.image) for p in store.get_pictures("plain", 0, 1e9)] == [
            (p.time_s, p.image) for p in store.get_pictures("rayed", 0, 1e9)
        ]
        for question in ("What appeared?", "When did it appear?"):
            a, b = client.ask("plain", question), client.ask("rayed", question)
            assert (a.answer, [(e.chunk_index, e.score) for e in a.evidence]) == (
                b.answer,
                [(e.chunk_index, e.score) for e in b.evidence],
            )


def test_ray_on_a_server_without_it_is_refused_in_one_line(
    tmp_path: Path, module_redis: EmbeddedRedis, video: Path
) -> None:
    with (
        LongWatchServer(loopback_settings(tmp_path, module_redis.url)) as plain_server,
        LongWatchClient(f"127.0.0.1:{plain_server.port}", timeout=60) as client,
    ):
        with pytest.raises(LongWatchError) as refused:
            list(client.ingest_file("nope", path=video, ray=True))
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "serve --ray" in str(refused.value) and "\n" not in str(refused.value)
        with pytest.raises(LongWatchError, match="does not exist|no stream|not found"):
            client.get_stream("nope")  # nothing was made

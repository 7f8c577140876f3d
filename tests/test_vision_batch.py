"""The vision tower run once over several streams' chunks (stream/vision_batch.py): each chunk's
features equal its own pass bit for bit, and concurrent ingests make the very chunks one ingest
alone makes. Shared summary passes (a choice): each chunk's K/V equal to its own pass up to float
rounding, and the same answers. Real model code (the built-in demo model), real service and Redis."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from service_settings import loopback_settings

from longwatch.clients.client import LongWatchClient
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.compressor import run_chunk
from longwatch.model.config import ModelConfig
from longwatch.model.loading import load_model
from longwatch.model.train.synthetic import write_video
from longwatch.model.vision import chunk_frames, encode_frames
from longwatch.stream.server import LongWatchServer
from longwatch.stream.vision_batch import ChunkLayout, VisionBatcher


def test_a_batched_pass_gives_each_chunk_its_own_features(tmp_path: Path) -> None:
    lm = load_model(ModelConfig(), state_dir=tmp_path)
    batcher = VisionBatcher(lm)
    g = torch.Generator().manual_seed(0)
    chunks = [(torch.randn(8 * 4 * 4, 3 * 14 * 14, generator=g), 4, 4) for _ in range(3)]
    chunks.append((torch.randn(8 * 4 * 6, 3 * 14 * 14, generator=g), 4, 6))  # another grid
    requests = [batcher.submit(pv, 8, gh, gw) for pv, gh, gw in chunks]
    got = [batcher.features(r) for r in requests]
    with torch.no_grad():
        alone = [encode_frames(lm, pv, 8, gh, gw) for pv, gh, gw in chunks]
    assert all(torch.equal(a, b) for a, b in zip(got, alone, strict=True))
    assert (batcher.passes, batcher.chunks) == (2, 4)  # the three 4x4 chunks in one pass


def ingest_at_once(client: LongWatchClient, video: Path, stream_ids: list[str]) -> None:
    """The video into every one of the streams at the same time, one thread each."""
    threads = [
        threading.Thread(target=lambda s=s: list(client.ingest_file(s, path=video))) for s in stream_ids
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "yard.mp4", seconds=96, fps=2, width=160, height=120, seed=8)


def test_concurrent_ingests_share_vision_passes_and_make_the_same_chunks(
    tmp_path: Path, module_redis: EmbeddedRedis, video: Path
) -> None:
    with (
        LongWatchServer(loopback_settings(tmp_path / "state", module_redis.url)) as server,
        LongWatchClient(f"127.0.0.1:{server.port}", timeout=120) as client,
    ):
        list(client.ingest_file("alone", path=video))
        vision = server.service.runner.vision  # type: ignore[union-attr]
        before = (vision.passes, vision.chunks)
        ingest_at_once(client, video, [f"together-{n}" for n in range(4)])
        passes, chunks = vision.passes - before[0], vision.chunks - before[1]
        assert chunks == 4 * 12 and passes < chunks  # passes were shared
        store = server.store
        assert store is not None
        alone = store.get_chunks("alone", range(12))
        for n in range(4):
            for a, b in zip(alone, store.get_chunks(f"together-{n}", range(12)), strict=True):
                assert torch.equal(a.keys, b.keys) and torch.equal(a.retrieval, b.retrieval)


def test_a_shared_summary_pass_gives_each_chunk_its_own_pass_up_to_float_rounding(tmp_path: Path) -> None:
    lm = load_model(ModelConfig(), state_dir=tmp_path)
    batcher = VisionBatcher(lm, share_summary=True)
    g = torch.Generator().manual_seed(1)
    layouts, requests = [], []
    for n in range(3):  # DiffFP kept different tokens of each: sequences of different lengths
        keep = torch.rand(8 * 4, generator=g) < 0.4 + 0.2 * n
        keep[:4] = True  # a chunk's first frame keeps every token
        layout = ChunkLayout([100.0 * n + i for i in range(8)], keep, n == 0, 100.0 * n + 8)
        pixels = torch.randn(8 * 4 * 4, 3 * 14 * 14, generator=g)
        layouts.append(layout)
        requests.append(batcher.submit(pixels, 8, 4, 4, layout))
    for request, layout in zip(requests, layouts, strict=True):
        features = batcher.features(request)
        shared = batcher.summary(request)
        assert shared is not None
        frames, kv = shared
        with torch.no_grad():
            alone = run_chunk(
                lm,
                chunk_frames(layout.frame_times, features, layout.keep, layout.first_in_stream, layout.end_s),
                lm.config.alpha,
                lm.prefix_cache(),
                lm.prefix_len,
            )
        assert frames.tokens_per_frame == layout.keep.view(8, -1).sum(1).tolist()
        assert kv.keys.shape == alone.keys.shape and torch.equal(kv.positions, alone.positions)
        for a, b in ((kv.keys, alone.keys), (kv.values, alone.values), (kv.retrieval, alone.retrieval)):
            assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert (batcher.summary_passes, batcher.summary_chunks) == (1, 3)
    single = batcher.submit(torch.randn(8 * 16, 3 * 14 * 14, generator=g), 8, 4, 4, layouts[0])
    batcher.features(single)
    assert batcher.summary(single) is None  # a chunk alone: the compressor runs its pass as before


def test_concurrent_ingests_with_shared_summary_passes_answer_as_one_alone(
    tmp_path: Path, module_redis: EmbeddedRedis, video: Path
) -> None:
    settings = loopback_settings(
        tmp_path / "state", module_redis.url, share_summary_passes=True, kv_storage="float"
    )
    with (
        LongWatchServer(settings) as server,
        LongWatchClient(f"127.0.0.1:{server.port}", timeout=120) as client,
    ):
        list(client.ingest_file("solo", path=video))
        ingest_at_once(client, video, [f"shared-{n}" for n in range(4)])
        vision = server.service.runner.vision  # type: ignore[union-attr]
        assert vision.summary_chunks > vision.summary_passes > 0  # passes were shared
        store = server.store
        assert store is not None
        alone = store.get_chunks("solo", range(12))
        for n in range(4):
            for a, b in zip(alone, store.get_chunks(f"shared-{n}", range(12)), strict=True):
                assert torch.allclose(a.keys, b.keys, atol=1e-5, rtol=0)
                assert torch.allclose(a.retrieval, b.retrieval, atol=1e-5, rtol=0)
        for question in ("What appeared?", "When did it appear?"):
            expected = client.ask("solo", question)
            for n in range(4):
                got = client.ask(f"shared-{n}", question)
                assert got.answer == expected.answer
                assert [e.chunk_index for e in got.evidence] == [e.chunk_index for e in expected.evidence]


def test_while_an_answer_waits_each_chunk_runs_its_own_summary_pass(tmp_path: Path) -> None:
    """A shared summary pass would hold the model for every chunk in it; an answer waiting for the
    model gets its step between single passes instead (the model lock's asks_waiting)."""
    from longwatch.stream.model_lock import ASK, ModelLock

    lm = load_model(ModelConfig(), state_dir=tmp_path)
    lock = ModelLock()
    batcher = VisionBatcher(lm, share_summary=True, asks_waiting=lock.asks_waiting)
    g = torch.Generator().manual_seed(2)
    layout = ChunkLayout([float(i) for i in range(8)], torch.ones(8 * 4, dtype=torch.bool), True, 8.0)
    requests = [
        batcher.submit(torch.randn(8 * 16, 3 * 14 * 14, generator=g), 8, 4, 4, layout) for _ in range(3)
    ]
    asking = threading.Event()

    def ask() -> None:
        with lock.hold(ASK):
            asking.set()

    with lock.hold(ASK + 1):  # an ingest holds the model; an answer's step queues behind it
        waiter = threading.Thread(target=ask)
        waiter.start()
        while not lock.asks_waiting():
            threading.Event().wait(0.01)
        batcher.features(requests[0])
        assert [batcher.summary(r) for r in requests] == [None, None, None]
        assert batcher.passes == 1 and batcher.summary_passes == 0  # the vision pass was still shared
    waiter.join(10)
    assert asking.is_set() and not lock.asks_waiting()

"""The vision tower run once over several streams' chunks (stream/vision_batch.py): each chunk's
features equal its own pass bit for bit, and concurrent ingests make the very chunks one ingest
alone makes. Real model code (the built-in demo model), real service and Redis."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from service_settings import loopback_settings

from longwatch.clients.client import LongWatchClient
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.config import ModelConfig
from longwatch.model.loading import load_model
from longwatch.model.train.synthetic import write_video
from longwatch.model.vision import encode_frames
from longwatch.stream.server import LongWatchServer
from longwatch.stream.vision_batch import VisionBatcher


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
        threads = [
            threading.Thread(target=lambda n=n: list(client.ingest_file(f"together-{n}", path=video)))
            for n in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        passes, chunks = vision.passes - before[0], vision.chunks - before[1]
        assert chunks == 4 * 12 and passes < chunks  # passes were shared
        store = server.store
        assert store is not None
        alone = store.get_chunks("alone", range(12))
        for n in range(4):
            for a, b in zip(alone, store.get_chunks(f"together-{n}", range(12)), strict=True):
                assert torch.equal(a.keys, b.keys) and torch.equal(a.retrieval, b.retrieval)

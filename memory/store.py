"""The chunk store: a narrow interface (streams, chunks, vectors) and its Redis backend.

Key layout (every per-stream key carries the stream in a Redis Cluster hash tag, so one stream's
keys share a slot and one MULTI/EXEC can cover them):

    lw:{<id>}:stream     hash   the StreamRecord, counters as integers (HINCRBY-able); a live
                                stream's frames_pending too
    lw:{<id>}:chunk:<i>  string safetensors bytes of ChunkCache i
    lw:{<id>}:vectors    hash   i -> retrieval vector, little-endian float32
    lw:{<id>}:spans      hash   i -> JSON [start_s, end_s]
    lw:{<id>}:committed  hash   i -> when chunk i was committed (unix seconds): retention's clock
    lw:{<id>}:pictures   hash   "i:t" -> a JPEG of the sampled frame at stream time t in chunk i
    lw:{<id>}:picture_times  hash   i -> JSON [t, ...]: chunk i's picture times (what Ask names)
    lw:{<id>}:cold       hash   i -> JSON {"bytes", "sha256"}: chunk i's blob is in the cold tier
                                (memory/tier.py), no longer at lw:{<id>}:chunk:<i>
    lw:{<id>}:cold_pictures  hash   i -> JSON {"bytes", "sha256"}: chunk i's pictures went with it,
                                packed in one blob; "bytes" is what the stream's counters hold for
                                them (the images), the SHA-256 is the blob's
    lw:{<id>}:lease      string JSON {"holder", "token"} with a TTL: who may write the stream now
                                (one ingest at a time across replicas), renewed while it runs; a
                                write carrying another token than this one's is refused (LeaseLost)
    lw:{<id>}:ingest     string a live stream's small ingest state (safetensors bytes, written by
                                stream/live.py), so a reconnect or a restart continues the stream
    lw:streams           set    ids of all streams (another slot: never inside a stream's transaction)
    lw:lease_tokens      string the last fencing token handed out (INCR): tokens only ever grow,
                                so no writer ever gets a token an earlier one had

The record hash is the truth about whether a stream exists; ``lw:streams`` is an index of it that
may briefly hold an id without a record (create adds the id first, delete removes it last), which
list_streams skips. A chunk is committed when its blob, vector and span land in one transaction.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import queue
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlparse

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    RedisClusterException,
    TryAgainError,
)
from redis.retry import Retry

from longwatch.memory.chunk import ChunkCache
from longwatch.memory.faults import crash_point
from longwatch.memory.records import (
    DEFAULT_COMMIT_WAIT_MS,
    LEGACY_KV_STORAGE,
    ChunkAge,
    ChunkExists,
    ChunkNotFound,
    ChunkSpan,
    CorruptData,
    IngestCounters,
    LeaseHeld,
    LeaseLost,
    Picture,
    StoreError,
    StoreFull,
    StoreUnavailable,
    StreamExists,
    StreamNotFound,
    record_from_hash,
    record_to_hash,
)
from longwatch.memory.serialization import (
    chunk_from_bytes,
    chunk_to_bytes,
    pictures_from_bytes,
    pictures_to_bytes,
    vector_from_bytes,
    vector_to_bytes,
)
from longwatch.memory.tier import BlobTier, checked
from longwatch.proto.streams import KV_STORAGE, StreamRecord, StreamState, validate_stored_id

STREAMS_KEY = "lw:streams"
LEASE_TOKENS_KEY = "lw:lease_tokens"
# A live stream's sampled frames not yet in a chunk, in its record hash beside the StreamRecord's
# fields (not one of them: it is the service's bookkeeping, turned into frames_lost after a crash).
PENDING_FIELD = "frames_pending"
# Bumped in the transaction of every commit and drop: what a replica's index compares to follow them.
INDEX_VERSION_FIELD = "index_version"
DEFAULT_KV_STORAGE = "float"
URL_SCHEMES = ("redis", "rediss", "unix")
_MAX_TXN_ATTEMPTS = 64  # optimistic-lock retries before giving up on a hot key

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class StreamKeys:
    """The Redis keys of one stream; constructing it validates the id, so no bad id reaches a key."""

    stream_id: str

    def __post_init__(self) -> None:
        validate_stored_id(self.stream_id)

    @property
    def prefix(self) -> str:
        return f"lw:{{{self.stream_id}}}"

    @property
    def record(self) -> str:
        return f"{self.prefix}:stream"

    @property
    def vectors(self) -> str:
        return f"{self.prefix}:vectors"

    @property
    def spans(self) -> str:
        return f"{self.prefix}:spans"

    @property
    def ingest(self) -> str:
        return f"{self.prefix}:ingest"

    @property
    def committed(self) -> str:
        return f"{self.prefix}:committed"

    @property
    def cold(self) -> str:
        return f"{self.prefix}:cold"

    @property
    def pictures(self) -> str:
        return f"{self.prefix}:pictures"

    @property
    def picture_times(self) -> str:
        return f"{self.prefix}:picture_times"

    @property
    def cold_pictures(self) -> str:
        return f"{self.prefix}:cold_pictures"

    @property
    def lease(self) -> str:
        return f"{self.prefix}:lease"

    def chunk(self, index: int) -> str:
        return f"{self.prefix}:chunk:{int(index)}"


class ChunkStore(ABC):
    """Where streams and their committed chunks live; the service and Ask path see only this.

    Batched reads default to loops over single ones; a backend overrides them when it can do
    better (Redis: one MGET).
    """

    @abstractmethod
    def create_stream(self, record: StreamRecord) -> None:
        """Create a stream record; raises StreamExists if the id is taken."""

    @abstractmethod
    def get_stream(self, stream_id: str) -> StreamRecord | None: ...

    @abstractmethod
    def list_streams(self) -> list[StreamRecord]:
        """All streams, sorted by id."""

    @abstractmethod
    def set_state(self, stream_id: str, state: StreamState, fence: int | None = None) -> None:
        """Set the stream's state. Every write an ingest makes takes its lease's `fence` token: one
        older than the newest handed out is LeaseLost and writes nothing (acquire_lease)."""

    @abstractmethod
    def add_counters(
        self, stream_id: str, counters: IngestCounters, pending: int | None = None, fence: int | None = None
    ) -> None:
        """Add counter deltas; `pending` (a live stream's sampled frames not yet in a chunk) is set, not added."""

    @abstractmethod
    def frames_pending(self, stream_id: str) -> int:
        """A live stream's sampled frames not yet in a chunk, as last stored (what a crash loses)."""

    @abstractmethod
    def commit_chunk(
        self,
        chunk: ChunkCache,
        counters: IngestCounters | None = None,
        pictures: Sequence[Picture] = (),
        fence: int | None = None,
    ) -> int:
        """Write chunk, vector, span, its pictures and counters atomically; return the bytes stored."""

    @abstractmethod
    def get_pictures(
        self, stream_id: str, from_s: float, to_s: float, indices: Sequence[int] | None = None
    ) -> list[Picture]:
        """Pictures with from_s <= time_s <= to_s (of these chunks only, if given), by time."""

    @abstractmethod
    def picture_at(self, stream_id: str, at_s: float) -> Picture | None:
        """The picture nearest stream time at_s (the earlier of two as near), or None if none."""

    @abstractmethod
    def picture_times(self, stream_id: str, indices: Sequence[int]) -> dict[int, list[float]]:
        """The times of each chunk's pictures (an answer's evidence names them)."""

    @abstractmethod
    def chunk_spans(self, stream_id: str) -> list[ChunkSpan]:
        """Committed chunks' time spans, sorted by index."""

    @abstractmethod
    def get_chunk(self, stream_id: str, index: int) -> ChunkCache: ...

    def get_chunks(self, stream_id: str, indices: Sequence[int]) -> list[ChunkCache]:
        """Chunks in the order asked; raises ChunkNotFound if any is not committed."""
        return [self.get_chunk(stream_id, i) for i in indices]

    @abstractmethod
    def retrieval_vectors(self, stream_id: str) -> tuple[list[int], np.ndarray]:
        """(chunk indices sorted, (n, dim) float32 vectors in the same order)."""

    @abstractmethod
    def index_version(self, stream_id: str) -> str:
        """Changes whenever a chunk of the stream is committed or dropped, or the stream is made
        again ("" without a record): how a replica's FAISS index follows commits made elsewhere."""

    def index_versions(self, stream_ids: Sequence[str]) -> list[str]:
        """index_version of each stream, in order (a backend may read them in one round trip)."""
        return [self.index_version(sid) for sid in stream_ids]

    @abstractmethod
    def vector_ids(self, stream_id: str) -> list[int]:
        """The indices of the chunks that have a retrieval vector."""

    @abstractmethod
    def vectors_of(self, stream_id: str, indices: Sequence[int]) -> np.ndarray:
        """These chunks' vectors, (n, dim) float32; ChunkNotFound for one that has none."""

    @abstractmethod
    def put_ingest_state(self, stream_id: str, blob: bytes, fence: int | None = None) -> None:
        """Replace a live stream's ingest state (opaque bytes); raises StreamNotFound without a record."""

    @abstractmethod
    def acquire_lease(self, stream_id: str, holder: str, ttl_ms: int) -> int:
        """Take the stream's ingest lease for `holder` (a replica) for ttl_ms; returns its fencing
        token, higher than any handed out before for this id. LeaseHeld while another holder's
        lease runs; a lease of the same holder (its own earlier process) is taken over."""

    @abstractmethod
    def renew_lease(self, stream_id: str, holder: str, token: int, ttl_ms: int) -> bool:
        """Extend the lease; False if it passed to another writer (the ingest must stop)."""

    @abstractmethod
    def release_lease(self, stream_id: str, holder: str, token: int) -> None:
        """Let go of the lease if it is still this one."""

    @abstractmethod
    def lease_holder(self, stream_id: str) -> str | None:
        """Who holds the stream's lease now, if anyone."""

    @abstractmethod
    def settle_orphaned(self, stream_id: str, holder: str | None) -> tuple[StreamState, int] | None:
        """A stream left INGESTING or LIVE by a writer that is gone (no lease, or one of `holder`'s
        own, from an earlier process): INTERRUPTED, or READY with its pending frames counted lost.
        Returns (new state, frames lost), or None if it was not orphaned."""

    @abstractmethod
    def get_ingest_state(self, stream_id: str) -> bytes | None: ...

    @abstractmethod
    def delete_stream(self, stream_id: str) -> int:
        """Remove every key of the stream; return how many keys were deleted (0 if none)."""

    @abstractmethod
    def set_retention(self, stream_id: str, max_age_s: float, max_bytes: int) -> None:
        """Set a stream's own retention (0: none of its own); raises StreamNotFound without a record."""

    @abstractmethod
    def chunk_ages(self, stream_id: str) -> list[ChunkAge]:
        """Committed chunks, oldest first: index, commit time and stored bytes (what retention reads)."""

    @abstractmethod
    def move_to_cold(self, stream_id: str, indices: Sequence[int]) -> int:
        """Move these chunks' blobs to the cold tier (Redis keeps a pointer); returns the bytes
        moved. Chunks already cold, or gone, are skipped; without a cold tier nothing moves."""

    @abstractmethod
    def drop_chunks(self, stream_id: str, indices: Sequence[int]) -> int:
        """Remove these committed chunks whole (blob, vector, span), counting them in the record's
        chunks_dropped and bytes_dropped; returns the bytes freed. Unknown indices are skipped."""

    @abstractmethod
    def ping(self) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class StoreRetry:
    """How long a write waits out an unavailable Redis (a restart, a failover) before giving up.

    Reads fail fast (the caller is told UNAVAILABLE); ingest's commits wait, so that a stream goes
    on across a Redis restart. A commit repeated after a lost reply writes nothing twice
    (`commit_chunk` recognises its own bytes).
    """

    deadline_s: float = 30.0
    first_wait_s: float = 0.1
    max_wait_s: float = 2.0

    def call(self, fn: Callable[[], T], give_up: Callable[[], bool] = lambda: False) -> T:
        """fn(), again after each StoreUnavailable until the deadline passes or give_up() says so."""
        deadline = time.monotonic() + self.deadline_s
        wait = self.first_wait_s
        while True:
            try:
                return fn()
            except StoreUnavailable:
                if time.monotonic() + wait > deadline or give_up():
                    raise
                time.sleep(wait)
                wait = min(self.max_wait_s, wait * 2)


def redis_errors_as_store_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Map Redis' failures to the store's errors so callers handle one exception tree.

    Transport failures are StoreUnavailable; a Redis that refuses writes (OOM at maxmemory, MISCONF
    when it cannot persist, READONLY on a replica) is StoreFull; nothing was written either way.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            _learn_slots(args)
            raise StoreUnavailable(f"redis unavailable during {fn.__name__}: {_first_line(e)}") from e
        except (ClusterDownError, TryAgainError, AskError, RedisClusterException) as e:
            # A Redis Cluster mid-failover: a slot without a master for a moment, or moving.
            _learn_slots(args)
            raise StoreUnavailable(f"redis cluster unavailable during {fn.__name__}: {_first_line(e)}") from e
        except redis.ResponseError as e:
            # In a transaction the first refused command's error comes wrapped ("Command # 3 (...)
            # of pipeline caused error: ..."), or as the EXECABORT that follows it.
            text = _first_line(e)
            if isinstance(e, redis.exceptions.OutOfMemoryError) or "maxmemory" in text:
                raise StoreFull(f"redis is full (maxmemory): {fn.__name__} refused; reads go on") from e
            if "MISCONF" in text or isinstance(e, redis.exceptions.ReadOnlyError):
                raise StoreFull(
                    f"redis refuses writes (it cannot persist: is its disk full?) during {fn.__name__}"
                ) from e
            if isinstance(e, redis.exceptions.ExecAbortError):
                raise StoreFull(f"redis refused {fn.__name__}'s transaction; reads go on") from e
            if "WRONGTYPE" in text:  # a key of ours overwritten with another kind of value
                raise CorruptData(f"{fn.__name__}: a key holds the wrong kind of value ({text})") from e
            raise

    return wrapper


def run_transaction(
    client: redis.Redis | RedisCluster, watch: list[str], body: Callable[[Pipeline], None]
) -> list[Any]:
    """Optimistic transaction on `client`: WATCH the keys, run `body` (reads, then multi() and the
    writes), EXEC; a concurrent write to a watched key runs the body again on fresh reads."""
    with client.pipeline(transaction=True) as pipe:
        for _ in range(_MAX_TXN_ATTEMPTS):
            try:
                pipe.watch(*watch)
                body(pipe)
                return pipe.execute()
            except redis.WatchError:
                continue
    raise StoreError(f"transaction on {watch[0]} lost {_MAX_TXN_ATTEMPTS} races in a row; giving up")


def _learn_slots(args: tuple[object, ...]) -> None:
    """After a failure on a cluster, ask it who serves each slot now (a replica may have taken
    over), so the caller's next try goes to the new master instead of the dead one."""
    if args and isinstance(args[0], RedisChunkStore):
        args[0]._refresh_slots()


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class RedisChunkStore(ChunkStore):
    """ChunkStore on one Redis or a Redis Cluster (a stream's keys share one hash slot, so each of
    its transactions runs on one master).

    The client must use decode_responses=False: chunk blobs and vectors are raw bytes.
    Thread-safe as far as redis-py's connection pool is: each call takes its own connection.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        kv_storage: str = DEFAULT_KV_STORAGE,
        cold: BlobTier | None = None,
        commit_replicas: int = 0,
        commit_wait_ms: int = DEFAULT_COMMIT_WAIT_MS,
    ) -> None:
        """kv_storage: how streams created through this store keep their K/V ("float" or "int8");
        a stream keeps the choice it was created with, whatever store commits to it later.
        cold: the tier old chunks' blobs move to (move_to_cold); reads look there for them.
        commit_replicas: a commit returns only once this many replicas have it (Redis WAIT, at most
        commit_wait_ms; fewer is StoreUnavailable, and the ingest's retry commits again)."""
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisChunkStore needs a client with decode_responses=False (blobs are bytes)")
        if kv_storage not in KV_STORAGE:
            raise ValueError(f"kv_storage must be one of {KV_STORAGE}, got {kv_storage!r}")
        if commit_replicas < 0 or commit_wait_ms <= 0:
            raise ValueError("commit_replicas must be >= 0 and commit_wait_ms > 0")
        self._r = client
        self.kv_storage = kv_storage
        self.cold = cold
        self.commit_replicas = commit_replicas
        self.commit_wait_ms = commit_wait_ms
        # Single-connection clients by master address, for commits that WAIT: WAIT counts the
        # replicas that have this connection's writes, so it must follow EXEC on the same one.
        self._pinned: dict[tuple[str, int], queue.SimpleQueue[redis.Redis]] = {}

    @property
    def client(self) -> redis.Redis | RedisCluster:
        return self._r

    @property
    def is_cluster(self) -> bool:
        return isinstance(self._r, RedisCluster)

    # --- streams ---------------------------------------------------------------------------------------

    @redis_errors_as_store_errors
    def create_stream(self, record: StreamRecord) -> None:
        keys = StreamKeys(record.stream_id)
        now = time.time()
        if not record.created_unix:
            record = dataclasses.replace(record, created_unix=now)
        if not record.updated_unix:
            record = dataclasses.replace(record, updated_unix=record.created_unix)
        if not record.kv_storage:
            record = dataclasses.replace(record, kv_storage=self.kv_storage)
        # The id goes into the global set first: a crash between the two leaves an id without a
        # record (skipped by list_streams), never a record that list_streams cannot see.
        self._r.sadd(STREAMS_KEY, record.stream_id)

        def body(pipe: Pipeline) -> None:
            if pipe.exists(keys.record):
                raise StreamExists(f"stream {record.stream_id!r} already exists")
            pipe.multi()
            pipe.hset(keys.record, mapping=record_to_hash(record))

        self._transact([keys.record], body)

    @redis_errors_as_store_errors
    def get_stream(self, stream_id: str) -> StreamRecord | None:
        data = self._r.hgetall(StreamKeys(stream_id).record)
        return record_from_hash(data) if data else None

    @redis_errors_as_store_errors
    def list_streams(self) -> list[StreamRecord]:
        ids = sorted(
            sid
            for sid in (m.decode("utf-8", "replace") for m in self._r.smembers(STREAMS_KEY))
            if _valid(sid)
        )
        pipe = self._r.pipeline(transaction=False)  # the records are in different slots
        for sid in ids:
            pipe.hgetall(StreamKeys(sid).record)
        records = []
        for sid, data in zip(ids, pipe.execute(raise_on_error=False), strict=True):
            try:
                if isinstance(data, Exception):
                    raise CorruptData(_first_line(data))
                if data:
                    records.append(record_from_hash(data))
            except CorruptData as e:
                # One damaged record must not hide every other stream; get_stream reports it
                # (DATA_LOSS) and delete_stream still removes it.
                log.warning("stream %r left out of the list: its record is corrupt: %s", sid, _first_line(e))
        return records

    @redis_errors_as_store_errors
    def set_state(self, stream_id: str, state: StreamState, fence: int | None = None) -> None:
        keys = StreamKeys(stream_id)
        fields = {"state": StreamState(state).value, "updated_unix": repr(time.time())}

        def body(pipe: Pipeline) -> None:
            self._require_stream(pipe, keys)
            _check_fence(pipe, keys, fence)
            pipe.multi()
            pipe.hset(keys.record, mapping=fields)

        self._transact([keys.record, keys.lease], body)

    @redis_errors_as_store_errors
    def add_counters(
        self, stream_id: str, counters: IngestCounters, pending: int | None = None, fence: int | None = None
    ) -> None:
        """HINCRBY each non-zero counter; checked under WATCH so a deleted stream is not resurrected."""
        keys = StreamKeys(stream_id)

        def body(pipe: Pipeline) -> None:
            self._require_stream(pipe, keys)
            _check_fence(pipe, keys, fence)
            pipe.multi()
            for name, delta in counters.items():
                pipe.hincrby(keys.record, name, delta)
            fields = {"updated_unix": repr(time.time())}
            if pending is not None:
                fields[PENDING_FIELD] = str(int(pending))
            pipe.hset(keys.record, mapping=fields)

        self._transact([keys.record, keys.lease], body)

    @redis_errors_as_store_errors
    def frames_pending(self, stream_id: str) -> int:
        value = self._r.hget(StreamKeys(stream_id).record, PENDING_FIELD)
        return max(0, _int_or_none(value) or 0) if value is not None else 0

    @redis_errors_as_store_errors
    def delete_stream(self, stream_id: str) -> int:
        keys = StreamKeys(stream_id)

        def body(pipe: Pipeline) -> None:
            # Chunk keys are named by the indices in spans and vectors (written together, but the
            # union costs nothing and survives a hand-edited hash). Should either be damaged (not
            # a hash), the stream's chunk keys are found by a scan instead: a corrupt stream must
            # still be deletable, whole.
            fields: set[bytes] = set()
            damaged = False
            for key in (keys.spans, keys.vectors):
                kind = pipe.type(key)
                if kind == b"hash":
                    fields |= set(pipe.hkeys(key))
                elif kind != b"none":
                    damaged = True
            chunk_keys = {keys.chunk(i) for i in (_int_or_none(f) for f in fields) if i is not None}
            if damaged:
                # (a valid stream id has no glob characters; a cluster client scans every master)
                chunk_keys |= {k.decode() for k in self._r.scan_iter(match=keys.chunk(0)[:-1] + "*")}
            pipe.multi()
            pipe.unlink(
                keys.record,
                keys.spans,
                keys.vectors,
                keys.ingest,
                keys.committed,
                keys.cold,
                keys.pictures,
                keys.picture_times,
                keys.cold_pictures,
                keys.lease,
                *sorted(chunk_keys),
            )

        results = self._transact([keys.record, keys.spans, keys.vectors], body)
        if self.cold is not None:
            self.cold.delete_stream(stream_id)
        self._r.srem(STREAMS_KEY, stream_id)  # last: see the module docstring
        return int(results[0])

    @redis_errors_as_store_errors
    def set_retention(self, stream_id: str, max_age_s: float, max_bytes: int) -> None:
        keys = StreamKeys(stream_id)

        def body(pipe: Pipeline) -> None:
            self._require_stream(pipe, keys)
            pipe.multi()
            pipe.hset(
                keys.record,
                mapping={"retention_age_s": repr(float(max_age_s)), "retention_bytes": int(max_bytes)},
            )

        self._transact([keys.record], body)

    @redis_errors_as_store_errors
    def chunk_ages(self, stream_id: str) -> list[ChunkAge]:
        keys = StreamKeys(stream_id)
        with self._r.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.spans)
            pipe.hgetall(keys.committed)
            pipe.hget(keys.record, "created_unix")
            pipe.hgetall(keys.cold)
            pipe.hgetall(keys.cold_pictures)
            spans, committed, created, cold, cold_pictures = pipe.execute()
        indices = sorted(i for i in (_int_or_none(f) for f in spans) if i is not None)
        pictures = self._picture_fields(self._r, keys)
        # Sizes only (STRLEN, HSTRLEN): the vectors and blobs themselves never leave Redis here.
        with self._r.pipeline(transaction=False) as pipe:
            for i in indices:
                pipe.strlen(keys.chunk(i))
            for i in indices:
                pipe.hstrlen(keys.vectors, str(i))
            for field in (f for i in indices for f in pictures.get(i, [])):
                pipe.hstrlen(keys.pictures, field)
            sizes = pipe.execute()
        n = len(indices)
        blob_sizes, vector_sizes, picture_sizes = sizes[:n], sizes[n : 2 * n], iter(sizes[2 * n :])
        fallback = float(created or 0.0)  # chunks committed before commit times were kept
        out = []
        for i, blob, vector in zip(indices, blob_sizes, vector_sizes, strict=True):
            field = str(i).encode()
            size = (
                int(blob)
                + _cold_bytes(cold.get(field))
                + _cold_bytes(cold_pictures.get(field))
                + int(vector)
                + len(spans.get(field, b""))
                + sum(next(picture_sizes) for _ in pictures.get(i, []))
            )
            when = committed.get(field)
            # Cold once its blob and its pictures have both left Redis (pictures kept in Redis by
            # an older version follow on the next sweep).
            all_cold = field in cold and not pictures.get(i)
            out.append(ChunkAge(i, float(when) if when else fallback, size, cold=all_cold))
        return out

    @redis_errors_as_store_errors
    def drop_chunks(self, stream_id: str, indices: Sequence[int]) -> int:
        keys = StreamKeys(stream_id)
        fields = [str(int(i)) for i in indices]
        freed = 0
        cold_dropped: list[int] = []

        def body(pipe: Pipeline) -> None:
            nonlocal freed
            self._require_stream(pipe, keys)
            spans = pipe.hmget(keys.spans, fields) if fields else []
            present = [f for f, there in zip(fields, spans, strict=True) if there]
            pointers = dict(zip(present, pipe.hmget(keys.cold, present) if present else [], strict=True))
            picture_pointers = dict(
                zip(present, pipe.hmget(keys.cold_pictures, present) if present else [], strict=True)
            )
            freed_cold = sum(_cold_bytes(pointers[f]) + _cold_bytes(picture_pointers[f]) for f in present)
            pictures = self._picture_fields(pipe, keys)
            picture_fields = [p for f in present for p in pictures.get(int(f), [])]
            freed = freed_cold + sum(
                pipe.strlen(keys.chunk(int(f))) + pipe.hstrlen(keys.vectors, f) + pipe.hstrlen(keys.spans, f)
                for f in present
            )
            freed += sum(pipe.hstrlen(keys.pictures, p) for p in picture_fields)
            cold_dropped[:] = [
                int(f) for f in present if pointers[f] is not None or picture_pointers[f] is not None
            ]
            pipe.multi()
            if not present:
                return
            pipe.unlink(*(keys.chunk(int(f)) for f in present))
            for key in (
                keys.vectors,
                keys.spans,
                keys.committed,
                keys.cold,
                keys.cold_pictures,
                keys.picture_times,
            ):
                pipe.hdel(key, *present)
            if picture_fields:
                pipe.hdel(keys.pictures, *picture_fields)
            pipe.hincrby(keys.record, "bytes_stored", -freed)
            pipe.hincrby(keys.record, "bytes_cold", -freed_cold)
            pipe.hincrby(keys.record, "chunks_dropped", len(present))
            pipe.hincrby(keys.record, INDEX_VERSION_FIELD, 1)
            pipe.hincrby(keys.record, "bytes_dropped", freed)

        self._transact([keys.record, keys.spans], body)
        if cold_dropped and self.cold is not None:
            self.cold.delete(stream_id, cold_dropped)  # after Redis let go: a crash leaves a stray file only
        return freed

    @redis_errors_as_store_errors
    def put_ingest_state(self, stream_id: str, blob: bytes, fence: int | None = None) -> None:
        """SET under WATCH of the record, so a stream deleted meanwhile is not half resurrected."""
        keys = StreamKeys(stream_id)

        def body(pipe: Pipeline) -> None:
            self._require_stream(pipe, keys)
            _check_fence(pipe, keys, fence)
            pipe.multi()
            pipe.set(keys.ingest, bytes(blob))

        self._transact([keys.record, keys.lease], body)

    @redis_errors_as_store_errors
    def get_ingest_state(self, stream_id: str) -> bytes | None:
        blob = self._r.get(StreamKeys(stream_id).ingest)
        return None if blob is None else bytes(blob)

    # --- chunks ----------------------------------------------------------------------------------------

    @redis_errors_as_store_errors
    def commit_chunk(
        self,
        chunk: ChunkCache,
        counters: IngestCounters | None = None,
        pictures: Sequence[Picture] = (),
        fence: int | None = None,
    ) -> int:
        """One MULTI/EXEC writes the blob, the vector, the span, the pictures and the record's counters.

        fence: the ingest's lease token; a newer one handed out since is LeaseLost, nothing written.

        Raises StreamNotFound (nothing written) without a record, ChunkExists if the index is
        already committed with different bytes, ValueError if the retrieval dim differs from the
        stream's earlier chunks. Committing identical bytes again writes nothing and returns 0, so a
        commit retried after a lost reply is not counted twice. duration_s becomes the largest end_s
        committed so far.
        """
        keys = StreamKeys(chunk.stream_id)
        _check_chunk(chunk)
        vector = vector_to_bytes(chunk.retrieval)
        span = json.dumps([float(chunk.start_s), float(chunk.end_s)]).encode()
        field = str(chunk.index)
        blobs: dict[str, bytes] = {}  # kv_storage -> blob: a retried transaction does not re-serialise
        written = 0

        def body(pipe: Pipeline) -> None:
            nonlocal written
            duration, kv_storage = self._check_stream(pipe, keys, chunk.stream_id)
            _check_fence(pipe, keys, fence)
            if kv_storage not in blobs:
                blobs[kv_storage] = chunk_to_bytes(chunk, kv_storage)
            blob = blobs[kv_storage]
            replayed = self._check_commit(pipe, keys, chunk, blob, vector)
            pipe.multi()
            if replayed:  # the identical chunk is already committed
                written = 0
                return
            written = len(blob) + len(vector) + len(span) + sum(len(p.image) for p in pictures)
            if pictures:
                pipe.hset(keys.pictures, mapping={_picture_field(p): p.image for p in pictures})
                pipe.hset(keys.picture_times, field, json.dumps([float(p.time_s) for p in pictures]))
            pipe.set(keys.chunk(chunk.index), blob)
            pipe.hset(keys.vectors, field, vector)
            pipe.hset(keys.spans, field, span)
            pipe.hset(keys.committed, field, repr(time.time()))
            pipe.hincrby(keys.record, "chunks", 1)
            pipe.hincrby(keys.record, INDEX_VERSION_FIELD, 1)
            pipe.hincrby(keys.record, "bytes_stored", written)
            for name, delta in (counters or IngestCounters()).items():
                pipe.hincrby(keys.record, name, delta)
            end = max(float(chunk.end_s), duration)
            pipe.hset(keys.record, mapping={"duration_s": repr(end), "updated_unix": repr(time.time())})
            crash_point("commit-before-exec")

        self._transact([keys.record, keys.spans, keys.lease], body, confirm=True)
        crash_point("commit-after-exec")
        return written

    @staticmethod
    def _check_stream(pipe: Pipeline, keys: StreamKeys, stream_id: str) -> tuple[float, str]:
        """The stream's duration_s and kv_storage, read under WATCH; StreamNotFound without a record."""
        sid, duration, kv_storage = pipe.hmget(keys.record, ["stream_id", "duration_s", "kv_storage"])
        if sid is None:
            raise StreamNotFound(f"stream {stream_id!r} does not exist; create it before committing")
        return float(duration or 0.0), kv_storage.decode() if kv_storage else LEGACY_KV_STORAGE

    @staticmethod
    def _check_commit(
        pipe: Pipeline, keys: StreamKeys, chunk: ChunkCache, blob: bytes, vector: bytes
    ) -> bool:
        """Reads under WATCH before a commit: True for a replayed commit (the same bytes again)."""
        if pipe.hexists(keys.spans, str(chunk.index)):
            # The same bytes again is a retried commit whose reply was lost: succeed, write nothing.
            if pipe.get(keys.chunk(chunk.index)) == blob:
                return True
            raise ChunkExists(f"chunk {chunk.index} of stream {chunk.stream_id!r} is already committed")
        sample = pipe.hrandfield(keys.vectors, 1, withvalues=True)  # [field, value] or []
        if sample and len(sample[1]) != len(vector):
            raise ValueError(
                f"retrieval dim of stream {chunk.stream_id!r} is {len(sample[1]) // 4}, "
                f"chunk {chunk.index} has {len(vector) // 4}"
            )
        return False

    @redis_errors_as_store_errors
    def chunk_spans(self, stream_id: str) -> list[ChunkSpan]:
        """Committed chunks' spans sorted by index; empty for a stream without chunks or record."""
        keys = StreamKeys(stream_id)
        spans = []
        for field, raw in self._r.hgetall(keys.spans).items():
            index = _int_or_none(field)
            if index is None:
                raise CorruptData(f"{keys.spans}: field {field!r} is not a chunk index")
            try:
                start, end = json.loads(raw)
                spans.append(ChunkSpan(index=index, start_s=float(start), end_s=float(end)))
            except (TypeError, ValueError) as e:
                raise CorruptData(
                    f"{keys.spans}[{index}]: not a [start, end] span: {raw[:60]!r} ({e})"
                ) from None
        return sorted(spans, key=lambda s: s.index)

    @redis_errors_as_store_errors
    def get_chunk(self, stream_id: str, index: int) -> ChunkCache:
        return self.get_chunks(stream_id, [index])[0]

    @redis_errors_as_store_errors
    def get_chunks(self, stream_id: str, indices: Sequence[int]) -> list[ChunkCache]:
        """One MGET for all of them; each blob is validated and checked against its key."""
        keys = StreamKeys(stream_id)
        indices = [int(i) for i in indices]
        if not indices:
            return []
        names = [keys.chunk(i) for i in indices]
        blobs = self._r.mget(names)
        if any(b is None for b in blobs):  # cold ones are in the tier, their pointers in Redis
            blobs = self._with_cold(keys, indices, blobs)
        missing = [i for i, b in zip(indices, blobs, strict=True) if b is None]
        if missing:
            if not self._r.exists(keys.record):
                raise StreamNotFound(f"stream {stream_id!r} does not exist")
            raise ChunkNotFound(f"stream {stream_id!r} has no committed chunk(s) {missing[:16]}")
        out = []
        for i, name, blob in zip(indices, names, blobs, strict=True):
            chunk = chunk_from_bytes(blob, name=name)
            if chunk.stream_id != stream_id or chunk.index != i:
                raise CorruptData(f"{name}: holds chunk {chunk.index} of stream {chunk.stream_id!r}")
            out.append(chunk)
        return out

    @redis_errors_as_store_errors
    def get_pictures(
        self, stream_id: str, from_s: float, to_s: float, indices: Sequence[int] | None = None
    ) -> list[Picture]:
        keys = StreamKeys(stream_id)
        wanted = None if indices is None else {int(i) for i in indices}
        chosen = sorted(
            (time_s, index)
            for index, times in self._all_picture_times(keys).items()
            if wanted is None or index in wanted
            for time_s in times
            if from_s <= time_s <= to_s
        )
        return self._read_pictures(keys, chosen)

    @redis_errors_as_store_errors
    def picture_at(self, stream_id: str, at_s: float) -> Picture | None:
        keys = StreamKeys(stream_id)
        every = [(t, i) for i, times in self._all_picture_times(keys).items() for t in times]
        if not every:
            return None
        nearest = min(every, key=lambda item: (abs(item[0] - at_s), item[0]))
        found = self._read_pictures(keys, [nearest])
        return found[0] if found else None

    def _all_picture_times(self, keys: StreamKeys) -> dict[int, list[float]]:
        """Chunk index -> its pictures' times, hot or cold (the times never leave Redis)."""
        out = {}
        for field, value in self._r.hgetall(keys.picture_times).items():
            index = _int_or_none(field)
            if index is None:
                raise CorruptData(f"{keys.picture_times}: field {field!r} is not a chunk index")
            out[index] = _parse_times(value, f"{keys.picture_times}[{index}]")
        return out

    def _read_pictures(self, keys: StreamKeys, chosen: list[tuple[float, int]]) -> list[Picture]:
        """The pictures at these (time, chunk index), in order: from Redis, else from the chunk's
        pictures blob in the cold tier (one read per chunk). One dropped meanwhile is left out."""
        fields = [_picture_field(Picture(index, time_s, b"")) for time_s, index in chosen]
        images = self._r.hmget(keys.pictures, fields) if fields else []
        cold = self._cold_pictures(
            keys, sorted({i for (_, i), im in zip(chosen, images, strict=True) if im is None})
        )
        out = []
        for (time_s, index), image in zip(chosen, images, strict=True):
            image = image if image is not None else cold.get((index, time_s))
            if image is not None:
                out.append(Picture(index, time_s, bytes(image)))
        return out

    def _cold_pictures(self, keys: StreamKeys, indices: list[int]) -> dict[tuple[int, float], bytes]:
        """(chunk index, time) -> image for these chunks' pictures in the cold tier, each blob
        checked against its SHA-256."""
        if not indices:
            return {}
        pointers = self._r.hmget(keys.cold_pictures, [str(i) for i in indices])
        out: dict[tuple[int, float], bytes] = {}
        for index, pointer in zip(indices, pointers, strict=True):
            if pointer is None:
                continue
            where = f"{keys.cold_pictures}[{index}]"
            blob = checked(self._from_tier(keys, index, where, "pictures"), _sha256(pointer, where), where)
            for picture in pictures_from_bytes(blob, index=index, name=where):
                out[(index, picture.time_s)] = picture.image
        return out

    def _from_tier(self, keys: StreamKeys, index: int, where: str, kind: str) -> bytes | None:
        if self.cold is None:
            raise CorruptData(f"{where}: chunk {index} is in a cold tier this service was not given")
        return self.cold.get(keys.stream_id, index, kind)

    @staticmethod
    def _picture_fields(client: redis.Redis | Pipeline, keys: StreamKeys) -> dict[int, list[bytes]]:
        """Chunk index -> the fields of its pictures."""
        fields: dict[int, list[bytes]] = {}
        for field in client.hkeys(keys.pictures):
            fields.setdefault(_parse_picture_field(field, keys.pictures)[0], []).append(field)
        return fields

    @redis_errors_as_store_errors
    def picture_times(self, stream_id: str, indices: Sequence[int]) -> dict[int, list[float]]:
        """One HMGET of the chunks' picture times (on every Ask: never a scan of all pictures)."""
        keys = StreamKeys(stream_id)
        wanted = [int(i) for i in indices]
        raw = self._r.hmget(keys.picture_times, [str(i) for i in wanted]) if wanted else []
        return {
            i: _parse_times(value, f"{keys.picture_times}[{i}]") if value is not None else []
            for i, value in zip(wanted, raw, strict=True)
        }

    def _with_cold(
        self, keys: StreamKeys, indices: list[int], blobs: list[bytes | None]
    ) -> list[bytes | None]:
        """`blobs` with those not in Redis read from the cold tier, where a pointer says so."""
        wanted = [i for i, b in zip(indices, blobs, strict=True) if b is None]
        pointers = dict(zip(wanted, self._r.hmget(keys.cold, [str(i) for i in wanted]), strict=True))
        out = list(blobs)
        for n, (i, blob) in enumerate(zip(indices, blobs, strict=True)):
            pointer = pointers.get(i) if blob is None else None
            if pointer is None:
                continue
            where = f"{keys.cold}[{i}]"
            out[n] = checked(self._from_tier(keys, i, where, "chunk"), _sha256(pointer, where), where)
        return out

    @redis_errors_as_store_errors
    def move_to_cold(self, stream_id: str, indices: Sequence[int]) -> int:
        if self.cold is None:
            return 0
        keys = StreamKeys(stream_id)
        moved = 0
        for index in (int(i) for i in indices):
            blob = self._r.get(keys.chunk(index))  # None: cold already, or dropped
            pictures = self._read_hot_pictures(keys, index)
            packed = pictures_to_bytes(index, pictures) if pictures else None
            if blob is None and packed is None:
                continue
            # Durable in the tier before Redis lets go of its copy.
            if blob is not None:
                self.cold.put(stream_id, index, blob)
            if packed is not None:
                self.cold.put(stream_id, index, packed, "pictures")
            if self._point_to_cold(keys, index, blob, pictures, packed):
                moved += len(blob or b"") + sum(len(p.image) for p in pictures)
            elif not self._r.hexists(keys.spans, str(index)):
                # Dropped meanwhile: what was just written is stray. (A chunk still there was moved
                # by another replica's sweep first, to the same files with the same bytes: kept.)
                kinds = ("chunk",) * (blob is not None) + ("pictures",) * (packed is not None)
                self.cold.delete(stream_id, [index], kinds)
        return moved

    def _read_hot_pictures(self, keys: StreamKeys, index: int) -> list[Picture]:
        """Chunk `index`'s pictures still in Redis."""
        times = _parse_times(self._r.hget(keys.picture_times, str(index)) or b"[]", keys.picture_times)
        fields = [_picture_field(Picture(index, t, b"")) for t in times]
        images = self._r.hmget(keys.pictures, fields) if fields else []
        return [Picture(index, t, bytes(im)) for t, im in zip(times, images, strict=True) if im is not None]

    def _point_to_cold(
        self, keys: StreamKeys, index: int, blob: bytes | None, pictures: list[Picture], packed: bytes | None
    ) -> bool:
        """Swap chunk `index`'s blob and pictures in Redis for their pointers, if they are still the
        ones copied (not dropped or deleted meanwhile); True if they were. `blob` None: the blob
        went cold earlier and only the pictures move (pictures an older version kept in Redis)."""
        swapped = False
        fields = [_picture_field(p) for p in pictures]

        def body(pipe: Pipeline) -> None:
            nonlocal swapped
            still = bool(pipe.hexists(keys.spans, str(index)))
            if blob is not None:
                still = still and pipe.get(keys.chunk(index)) == blob
            else:
                still = still and bool(pipe.hexists(keys.cold, str(index)))
            if fields:
                still = still and all(image is not None for image in pipe.hmget(keys.pictures, fields))
            pipe.multi()
            swapped = still
            if not swapped:
                return
            if blob is not None:
                pipe.hset(keys.cold, str(index), _pointer(len(blob), blob))
                pipe.unlink(keys.chunk(index))
                pipe.hincrby(keys.record, "bytes_cold", len(blob))
            if packed is not None:
                images = sum(len(p.image) for p in pictures)
                pipe.hset(keys.cold_pictures, str(index), _pointer(images, packed))
                pipe.hdel(keys.pictures, *fields)
                pipe.hincrby(keys.record, "bytes_cold", images)

        self._transact([keys.chunk(index), keys.spans, keys.record, keys.pictures, keys.cold], body)
        return swapped

    # --- ingest leases: one writer per stream across replicas -----------------------------------------

    @redis_errors_as_store_errors
    def acquire_lease(self, stream_id: str, holder: str, ttl_ms: int) -> int:
        keys = StreamKeys(stream_id)
        token = int(self._r.incr(LEASE_TOKENS_KEY))  # its own slot: taken before the transaction

        def body(pipe: Pipeline) -> None:
            current = _parse_lease(pipe.get(keys.lease))
            if current is not None and current[0] != holder:
                left = max(0, int(pipe.pttl(keys.lease)))
                raise LeaseHeld(
                    f"stream {stream_id!r} is being ingested by replica {current[0]} (its lease runs out "
                    f"in {left / 1000:.1f} s unless renewed)"
                )
            pipe.multi()
            pipe.set(keys.lease, json.dumps({"holder": holder, "token": token}), px=int(ttl_ms))

        self._transact([keys.lease], body)
        return token

    @redis_errors_as_store_errors
    def renew_lease(self, stream_id: str, holder: str, token: int, ttl_ms: int) -> bool:
        keys = StreamKeys(stream_id)
        renewed = False

        def body(pipe: Pipeline) -> None:
            nonlocal renewed
            # Only while it is still ours: once it ran out, another writer may have come and gone.
            renewed = _parse_lease(pipe.get(keys.lease)) == (holder, token)
            pipe.multi()
            if renewed:
                pipe.pexpire(keys.lease, int(ttl_ms))

        self._transact([keys.lease], body)
        return renewed

    @redis_errors_as_store_errors
    def release_lease(self, stream_id: str, holder: str, token: int) -> None:
        keys = StreamKeys(stream_id)

        def body(pipe: Pipeline) -> None:
            mine = _parse_lease(pipe.get(keys.lease)) == (holder, token)
            pipe.multi()
            if mine:
                pipe.delete(keys.lease)

        self._transact([keys.lease], body)

    @redis_errors_as_store_errors
    def lease_holder(self, stream_id: str) -> str | None:
        current = _parse_lease(self._r.get(StreamKeys(stream_id).lease))
        return None if current is None else current[0]

    @redis_errors_as_store_errors
    def settle_orphaned(self, stream_id: str, holder: str | None) -> tuple[StreamState, int] | None:
        keys = StreamKeys(stream_id)
        settled: tuple[StreamState, int] | None = None

        def body(pipe: Pipeline) -> None:
            nonlocal settled
            settled = None
            current = _parse_lease(pipe.get(keys.lease))
            state, pending = pipe.hmget(keys.record, ["state", PENDING_FIELD])
            pipe.multi()
            if (current is not None and current[0] != holder) or state is None:
                return
            if state.decode() == StreamState.INGESTING.value:
                settled = (StreamState.INTERRUPTED, 0)
            elif state.decode() == StreamState.LIVE.value:
                settled = (StreamState.READY, max(0, _int_or_none(pending or b"0") or 0))
                pipe.hincrby(keys.record, "frames_lost", settled[1])
                pipe.hset(keys.record, PENDING_FIELD, "0")
            else:
                return
            pipe.hset(keys.record, mapping={"state": settled[0].value, "updated_unix": repr(time.time())})

        self._transact([keys.lease, keys.record], body)
        return settled

    @redis_errors_as_store_errors
    def index_version(self, stream_id: str) -> str:
        return self.index_versions([stream_id])[0]

    @redis_errors_as_store_errors
    def index_versions(self, stream_ids: Sequence[str]) -> list[str]:
        pipe = self._r.pipeline(transaction=False)  # the records are in different slots
        for sid in stream_ids:
            pipe.hmget(StreamKeys(sid).record, ["created_unix", INDEX_VERSION_FIELD])
        return [
            "" if created is None else f"{created.decode()}:{int(version or 0)}"
            for created, version in pipe.execute()
        ]

    @redis_errors_as_store_errors
    def vector_ids(self, stream_id: str) -> list[int]:
        keys = StreamKeys(stream_id)
        return sorted(i for i in (_int_or_none(f) for f in self._r.hkeys(keys.vectors)) if i is not None)

    @redis_errors_as_store_errors
    def vectors_of(self, stream_id: str, indices: Sequence[int]) -> np.ndarray:
        keys = StreamKeys(stream_id)
        wanted = [int(i) for i in indices]
        raw = self._r.hmget(keys.vectors, [str(i) for i in wanted]) if wanted else []
        missing = [i for i, v in zip(wanted, raw, strict=True) if v is None]
        if missing:
            raise ChunkNotFound(f"stream {stream_id!r} has no vector for chunk(s) {missing[:16]}")
        vectors = [
            vector_from_bytes(v, name=f"{keys.vectors}[{i}]") for i, v in zip(wanted, raw, strict=True)
        ]
        return np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)  # (n, dim)

    @redis_errors_as_store_errors
    def retrieval_vectors(self, stream_id: str) -> tuple[list[int], np.ndarray]:
        """Every committed chunk's vector; (n, dim) float32, or (0, 0) for a stream without chunks."""
        keys = StreamKeys(stream_id)
        items = []
        for field, raw in self._r.hgetall(keys.vectors).items():
            index = _int_or_none(field)
            if index is None:
                raise CorruptData(f"{keys.vectors}: field {field!r} is not a chunk index")
            items.append((index, vector_from_bytes(raw, name=f"{keys.vectors}[{index}]")))
        if not items:
            return [], np.zeros((0, 0), dtype=np.float32)
        items.sort(key=lambda item: item[0])
        dims = {v.shape[0] for _, v in items}
        if len(dims) != 1:
            raise CorruptData(f"{keys.vectors}: vectors of different dims {sorted(dims)}")
        return [i for i, _ in items], np.stack([v for _, v in items])  # (n, dim)

    # --- connection ------------------------------------------------------------------------------------

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        for pinned in self._pinned.values():
            while not pinned.empty():
                pinned.get_nowait().close()
        self._r.close()

    # --- helpers ---------------------------------------------------------------------------------------

    def _transact(
        self, watch: list[str], body: Callable[[Pipeline], None], confirm: bool = False
    ) -> list[Any]:
        """Optimistic transaction: WATCH, let ``body`` read and queue writes after multi(), EXEC.

        A concurrent write to a watched key aborts EXEC (WatchError) and the body runs again on
        fresh reads; an exception from the body aborts with nothing written. With `confirm` and
        commit_replicas set, it returns once that many replicas have the writes (WAIT).
        """
        if confirm and self.commit_replicas:
            return self._transact_confirmed(watch, body)
        return run_transaction(self._r, watch, body)

    def _transact_confirmed(self, watch: list[str], body: Callable[[Pipeline], None]) -> list[Any]:
        address, pinned = self._take_pinned(watch[0])
        keep = True
        try:
            results = run_transaction(pinned, watch, body)
            acked = int(pinned.execute_command("WAIT", self.commit_replicas, self.commit_wait_ms))
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError, AskError) as e:
            # The master went away or gave up the slot (a failover): learn who serves it now.
            keep = False
            self._refresh_slots()
            raise StoreUnavailable(
                f"redis master {address[0]}:{address[1]} unavailable: {_first_line(e)}"
            ) from e
        finally:
            if keep:
                self._pinned.setdefault(address, queue.SimpleQueue()).put(pinned)
            else:
                pinned.close()
        if acked < self.commit_replicas:
            raise StoreUnavailable(
                f"{acked} of {self.commit_replicas} replicas confirmed the commit within "
                f"{self.commit_wait_ms} ms (written on the master; committing again)"
            )
        return results

    def _take_pinned(self, key: str) -> tuple[tuple[str, int], redis.Redis]:
        """A single-connection client to the master that holds `key`."""
        if isinstance(self._r, RedisCluster):
            node = self._r.get_node_from_key(key)
            if node is None:
                raise StoreUnavailable(f"redis cluster: no master serves {key} right now")
            pool = node.redis_connection.connection_pool
            address = (str(node.host), int(node.port))
        else:
            pool = self._r.connection_pool
            address = ("", 0)
        try:
            return address, self._pinned.setdefault(address, queue.SimpleQueue()).get_nowait()
        except queue.Empty:
            one = redis.ConnectionPool(
                connection_class=pool.connection_class, max_connections=1, **pool.connection_kwargs
            )
            return address, redis.Redis(connection_pool=one)

    def _refresh_slots(self) -> None:
        if isinstance(self._r, RedisCluster):
            try:
                self._r.nodes_manager.initialize()
            except (redis.RedisError, RedisClusterException) as e:  # the next retry tries again
                log.debug("redis cluster slots not refreshed: %s", _first_line(e))

    @staticmethod
    def _require_stream(pipe: Pipeline, keys: StreamKeys) -> None:
        if not pipe.exists(keys.record):
            raise StreamNotFound(f"stream {keys.stream_id!r} does not exist")


def open_store(
    url: str,
    *,
    retry: Retry | None = None,
    kv_storage: str = DEFAULT_KV_STORAGE,
    cold: BlobTier | None = None,
    commit_replicas: int = 0,
    commit_wait_ms: int = DEFAULT_COMMIT_WAIT_MS,
) -> RedisChunkStore:
    """A store for a Redis URL: redis://host:port/db, rediss:// (TLS) or unix:///path/to.sock.

    A URL of any node of a Redis Cluster opens the cluster (redis-py's RedisCluster finds the
    rest). kv_storage: how streams created through it keep their K/V ("float" or "int8");
    commit_replicas and commit_wait_ms: see RedisChunkStore.

    ``retry`` is handed to redis-py (reconnect/backoff policy lives in the client, not in callers);
    the default retries a failed command 3 times with exponential backoff.
    """
    scheme = urlparse(url).scheme
    if scheme not in URL_SCHEMES:
        raise ValueError(
            f"redis URL scheme must be one of {', '.join(s + '://' for s in URL_SCHEMES)}, got {url!r}"
        )
    if retry is None:
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.01), 3)
    client: redis.Redis | RedisCluster = redis.Redis.from_url(url, decode_responses=False, retry=retry)
    if scheme != "unix" and _cluster_enabled(client):
        client.close()
        client = RedisCluster.from_url(url, decode_responses=False, retry=retry)
    return RedisChunkStore(client, kv_storage, cold, commit_replicas, commit_wait_ms)


def _cluster_enabled(client: redis.Redis) -> bool:
    """Whether the server at the URL is a Redis Cluster node. One that cannot be asked now (down,
    or an ACL that refuses INFO) is taken for a standalone Redis, as before clusters were known."""
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    except redis.RedisError:
        return False


def _check_chunk(chunk: ChunkCache) -> None:
    if chunk.index < 0:
        raise ValueError(f"chunk index must be >= 0, got {chunk.index}")
    if not (math.isfinite(chunk.start_s) and math.isfinite(chunk.end_s) and chunk.start_s <= chunk.end_s):
        raise ValueError(f"chunk span must be finite with start <= end, got [{chunk.start_s}, {chunk.end_s}]")


def _picture_field(picture: Picture) -> str:
    return f"{int(picture.index)}:{float(picture.time_s)!r}"


def _parse_picture_field(field: bytes | str, where: str) -> tuple[int, float]:
    text = field.decode() if isinstance(field, bytes) else field
    index, _, time_s = text.partition(":")
    try:
        return int(index), float(time_s)
    except ValueError:
        raise CorruptData(f"{where}: field {text[:40]!r} is not <chunk>:<time>") from None


def _parse_lease(raw: bytes | None) -> tuple[str, int] | None:
    """(holder, token) of a lease value; None if there is none (a damaged one counts as none)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        return str(value["holder"]), int(value["token"])
    except (ValueError, KeyError, TypeError):
        return None


def _check_fence(pipe: Pipeline, keys: StreamKeys, fence: int | None) -> None:
    """Under WATCH of keys.lease: LeaseLost unless the lease is still the one of token `fence`."""
    if fence is None:
        return
    current = _parse_lease(pipe.get(keys.lease))
    if current is None or current[1] != fence:
        now = "ran out" if current is None else f"passed to replica {current[0]}"
        raise LeaseLost(f"stream {keys.stream_id!r}: this ingest's lease {now}; it stops here")


def _pointer(accounted: int, blob: bytes) -> str:
    """A cold-tier pointer: the bytes the stream's counters hold for it, and the blob's SHA-256."""
    return json.dumps({"bytes": int(accounted), "sha256": hashlib.sha256(blob).hexdigest()})


def _sha256(pointer: bytes, where: str) -> str:
    try:
        return str(json.loads(pointer)["sha256"])
    except (ValueError, KeyError, TypeError):
        raise CorruptData(f"{where}: not a cold-tier pointer: {pointer[:60]!r}") from None


def _parse_times(value: bytes, where: str) -> list[float]:
    try:
        return [float(t) for t in json.loads(value)]
    except (ValueError, TypeError):
        raise CorruptData(f"{where}: not a list of times: {value[:60]!r}") from None


def _cold_bytes(pointer: bytes | None) -> int:
    """A cold chunk's blob size, from its pointer (0 for a hot chunk, or a pointer that is damaged)."""
    if pointer is None:
        return 0
    try:
        return int(json.loads(pointer)["bytes"])
    except (ValueError, KeyError, TypeError):
        return 0


def _int_or_none(field: bytes | str) -> int | None:
    try:
        return int(field)
    except ValueError:
        return None


def _valid(stream_id: str) -> bool:
    try:
        validate_stored_id(stream_id)
    except ValueError:
        return False
    return True

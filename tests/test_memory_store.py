"""The chunk store against a real redis-server: serialization, records, commits, deletes, errors."""

from __future__ import annotations

import dataclasses
import json
import struct
import threading

import numpy as np
import pytest
import redis
import safetensors.torch
import torch
from redis.backoff import NoBackoff
from redis.retry import Retry

from longwatch.memory.records import (
    ChunkExists,
    ChunkNotFound,
    ChunkSpan,
    CorruptData,
    IngestCounters,
    StoreUnavailable,
    StreamExists,
    StreamNotFound,
    record_from_hash,
    record_to_hash,
)
from longwatch.memory.serialization import (
    chunk_from_bytes,
    chunk_to_bytes,
    vector_from_bytes,
    vector_to_bytes,
)
from longwatch.memory.store import RedisChunkStore, open_store
from longwatch.proto.streams import InvalidStreamId, StreamRecord, StreamState, validate_stream_id


def keys_of(client: redis.Redis, pattern: str) -> set[bytes]:
    return set(client.scan_iter(match=pattern, count=1000))


def assert_same_chunk(a, b) -> None:
    assert a.keys.dtype == b.keys.dtype and a.values.dtype == b.values.dtype
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert torch.equal(a.positions, b.positions) and a.positions.dtype == torch.int64
    assert torch.equal(a.retrieval, b.retrieval)
    for f in (
        "stream_id",
        "index",
        "start_s",
        "end_s",
        "frame_times",
        "tokens_seen",
        "tokens_kept",
        "mode",
        "alpha",
    ):
        assert getattr(a, f) == getattr(b, f), f


# --- serialization ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_chunk_bytes_round_trip_is_exact(make_chunk, dtype) -> None:
    chunk = make_chunk("cam-1", 3, dtype=dtype)
    back = chunk_from_bytes(chunk_to_bytes(chunk))
    assert_same_chunk(chunk, back)
    assert back.keys.dtype == dtype  # stored as given, not up-cast
    assert back.start_s == 3 * 8.0 + 0.1 + 0.2  # floats survive bit for bit


def test_chunk_bytes_are_deterministic(make_chunk) -> None:
    # the store recognises a retried commit by comparing bytes
    assert len({chunk_to_bytes(make_chunk("s", 4, dtype=torch.bfloat16)) for _ in range(8)}) == 1


def test_chunk_bytes_size_follows_dtype(make_chunk) -> None:
    fp32 = len(chunk_to_bytes(make_chunk("s", 0, dtype=torch.float32, n_kept=64)))
    bf16 = len(chunk_to_bytes(make_chunk("s", 0, dtype=torch.bfloat16, n_kept=64)))
    kv_values = 2 * 2 * 2 * 64 * 8  # keys + values, (layers, kv_heads, n_kept, head_dim)
    assert fp32 - bf16 == kv_values * 2


def test_non_contiguous_and_empty_chunks_round_trip(make_chunk) -> None:
    chunk = make_chunk("s", 1)
    keys_t = chunk.keys.transpose(2, 3).contiguous().transpose(2, 3)  # same values, not contiguous
    assert not keys_t.is_contiguous()
    chunk = dataclasses.replace(chunk, keys=keys_t)
    assert_same_chunk(chunk, chunk_from_bytes(chunk_to_bytes(chunk)))
    empty = make_chunk("s", 2, n_kept=0)
    assert chunk_from_bytes(chunk_to_bytes(empty)).n_kept == 0


def _blob_with(chunk, *, drop_tensor=None, metadata_patch=None, tensor_patch=None) -> bytes:
    tensors = {
        "keys": chunk.keys,
        "values": chunk.values,
        "positions": chunk.positions,
        "retrieval": chunk.retrieval,
    }
    tensors.update(tensor_patch or {})
    if drop_tensor:
        del tensors[drop_tensor]
    good = chunk_to_bytes(chunk)
    n = int.from_bytes(good[:8], "little")
    metadata = json.loads(good[8 : 8 + n])["__metadata__"]
    scalars = json.loads(metadata["longwatch.chunk"])
    for k, v in (metadata_patch or {}).items():
        if v is None:
            del scalars[k]
        else:
            scalars[k] = v
    return safetensors.torch.save(tensors, metadata={"longwatch.chunk": json.dumps(scalars)})


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c, good: b"", id="empty"),
        pytest.param(lambda c, good: b"not a safetensors blob at all", id="garbage"),
        pytest.param(lambda c, good: good[: len(good) // 2], id="truncated"),
        pytest.param(lambda c, good: good[:8] + b"x" + good[9:], id="broken-header-json"),
        pytest.param(lambda c, good: (10**9).to_bytes(8, "little") + good[8:], id="huge-header-length"),
        pytest.param(lambda c, good: safetensors.torch.save({"keys": c.keys}), id="no-metadata"),
        pytest.param(
            lambda c, good: safetensors.torch.save({"keys": c.keys}, metadata={"longwatch.chunk": "{"}),
            id="metadata-not-json",
        ),
        pytest.param(lambda c, good: _blob_with(c, drop_tensor="retrieval"), id="missing-tensor"),
        pytest.param(lambda c, good: _blob_with(c, metadata_patch={"index": None}), id="missing-scalar"),
        pytest.param(
            lambda c, good: _blob_with(c, metadata_patch={"index": "three"}), id="wrong-scalar-type"
        ),
        pytest.param(
            lambda c, good: safetensors.torch.save({"keys": c.keys}, metadata={"format": "pt"}),
            id="foreign-format",
        ),
        pytest.param(lambda c, good: _blob_with(c, metadata_patch={"version": 99}), id="future-version"),
        pytest.param(
            lambda c, good: _blob_with(c, tensor_patch={"keys": c.keys.to(torch.int32)}),
            id="kv-dtype-mismatch",
        ),
        pytest.param(
            lambda c, good: _blob_with(c, tensor_patch={"positions": c.positions[:-1]}), id="positions-shape"
        ),
    ],
)
def test_corrupt_bytes_raise_corrupt_chunk(make_chunk, mutate) -> None:
    chunk = make_chunk("s", 0)
    data = mutate(chunk, chunk_to_bytes(chunk))
    with pytest.raises(CorruptData) as info:
        chunk_from_bytes(data, name="lw:{s}:chunk:0")
    message = str(info.value)
    assert "\n" not in message and message.startswith("lw:{s}:chunk:0: ")


def test_vector_bytes_are_little_endian_float32() -> None:
    v = np.array([1.5, -2.25, 3.0], dtype=np.float32)
    data = vector_to_bytes(torch.from_numpy(v))
    assert data == struct.pack("<3f", 1.5, -2.25, 3.0)
    back = vector_from_bytes(data)
    assert back.dtype == np.float32 and np.array_equal(back, v)
    back[0] = 7.0  # writable: an index may normalise in place
    with pytest.raises(CorruptData):
        vector_from_bytes(data[:-1])
    with pytest.raises(ValueError):
        vector_to_bytes(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        vector_to_bytes(np.array([1.0, np.nan], dtype=np.float32))


# --- stream ids and records ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "a{b}", "{cam}", "a/b", "x" * 200, "a b", "a*", "cam\n", "kamera-ü", 42])
def test_invalid_stream_ids_are_rejected(store, redis_client, bad) -> None:
    with pytest.raises(InvalidStreamId) as info:
        validate_stream_id(bad)
    assert isinstance(info.value, ValueError)  # bad input, before any store work
    assert "\n" not in str(info.value) and "[A-Za-z0-9._-]" in str(info.value)
    with pytest.raises(InvalidStreamId):
        store.get_stream(bad)
    with pytest.raises(InvalidStreamId):
        store.delete_stream(bad)
    with pytest.raises(InvalidStreamId):
        StreamRecord(stream_id=bad)
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize("good", ["a", "cam-1.front_2", "x" * 128, "2026-01-01T10.00"])
def test_valid_stream_ids_are_accepted(good) -> None:
    assert validate_stream_id(good) == good


def test_record_hash_round_trip() -> None:
    rec = StreamRecord(
        stream_id="cam", source="rtsp://x", state=StreamState.READY, fps=0.1 + 0.2, model="tiny",
        created_unix=1.7e9 + 0.123, frames_decoded=10, tokens_kept=3, duration_s=12.5,
    )  # fmt: skip
    data = record_to_hash(rec)
    assert all(isinstance(v, str) for v in data.values())
    assert record_from_hash({k.encode(): v.encode() for k, v in data.items()}) == rec
    assert record_from_hash(data) == rec
    with pytest.raises(CorruptData, match="frames_kept"):
        record_from_hash({**data, "frames_kept": "many"})


def test_create_get_list_and_create_twice(store) -> None:
    store.create_stream(StreamRecord(stream_id="b", source="file.mp4", fps=2.0))
    store.create_stream(StreamRecord(stream_id="a"))
    got = store.get_stream("b")
    assert got is not None and got.source == "file.mp4" and got.fps == 2.0
    assert got.state is StreamState.INGESTING and got.created_unix > 0
    with pytest.raises(StreamExists):
        store.create_stream(StreamRecord(stream_id="b", source="other"))
    assert store.get_stream("b").source == "file.mp4"  # the first record is untouched
    assert [r.stream_id for r in store.list_streams()] == ["a", "b"]
    assert store.get_stream("missing") is None


def test_list_streams_skips_ids_without_record(store, redis_client) -> None:
    store.create_stream(StreamRecord(stream_id="real"))
    redis_client.sadd("lw:streams", "ghost")  # what a crash between SADD and the record leaves
    assert [r.stream_id for r in store.list_streams()] == ["real"]


def test_set_state_and_add_counters(store, redis_client) -> None:
    store.create_stream(StreamRecord(stream_id="s", created_unix=1.0, updated_unix=1.0))
    store.add_counters("s", IngestCounters(frames_decoded=30, frames_sampled=10, tokens_seen=160))
    store.add_counters("s", IngestCounters(frames_decoded=3, frames_dropped=1))
    store.set_state("s", StreamState.READY)
    rec = store.get_stream("s")
    assert (rec.frames_decoded, rec.frames_sampled, rec.tokens_seen, rec.frames_dropped) == (33, 10, 160, 1)
    assert rec.state is StreamState.READY and rec.updated_unix > 1.0 and rec.created_unix == 1.0
    with pytest.raises(StreamNotFound):
        store.add_counters("nope", IngestCounters(frames_decoded=1))
    with pytest.raises(StreamNotFound):
        store.set_state("nope", StreamState.READY)
    assert keys_of(redis_client, "lw:{nope}:*") == set()  # HINCRBY did not resurrect a partial record


# --- chunks ----------------------------------------------------------------------------------------------


def test_commit_then_spans_chunks_and_vectors(store, make_chunk) -> None:
    store.create_stream(StreamRecord(stream_id="cam"))
    chunks = [make_chunk("cam", i, dtype=torch.bfloat16) for i in (1, 0, 2)]  # out of order on purpose
    written = [
        store.commit_chunk(c, IngestCounters(frames_sampled=8, tokens_kept=c.tokens_kept)) for c in chunks
    ]
    assert all(w > 0 for w in written)

    assert store.chunk_spans("cam") == [
        ChunkSpan(i, i * 8.0 + 0.1 + 0.2, i * 8.0 + 0.1 + 0.2 + 8.0) for i in range(3)
    ]
    got = store.get_chunks("cam", [2, 0, 2])
    for g, i in zip(got, [2, 0, 2], strict=True):
        assert_same_chunk(g, next(c for c in chunks if c.index == i))
    assert_same_chunk(store.get_chunk("cam", 1), chunks[0])
    assert store.get_chunks("cam", []) == []

    ids, vectors = store.retrieval_vectors("cam")
    assert ids == [0, 1, 2] and vectors.shape == (3, 16) and vectors.dtype == np.float32
    for row, i in zip(vectors, ids, strict=True):
        assert np.array_equal(row, next(c for c in chunks if c.index == i).retrieval.numpy())

    rec = store.get_stream("cam")
    assert rec.chunks == 3 and rec.bytes_stored == sum(written)
    assert rec.frames_sampled == 24 and rec.tokens_kept == sum(c.tokens_kept for c in chunks)
    assert rec.duration_s == chunks[2].end_s  # the largest end, though chunk 2 was not the last commit


def test_commit_on_missing_stream_raises_and_writes_nothing(store, redis_client, make_chunk) -> None:
    with pytest.raises(StreamNotFound):
        store.commit_chunk(make_chunk("ghost", 0), IngestCounters(frames_sampled=8))
    assert redis_client.dbsize() == 0
    assert store.chunk_spans("ghost") == [] and store.retrieval_vectors("ghost")[0] == []


def test_commit_twice(store, make_chunk) -> None:
    store.create_stream(StreamRecord(stream_id="s"))
    first = store.commit_chunk(make_chunk("s", 0), IngestCounters(frames_sampled=8))
    # identical bytes: a retried commit, accepted without counting twice
    assert store.commit_chunk(make_chunk("s", 0), IngestCounters(frames_sampled=8)) == 0
    rec = store.get_stream("s")
    assert (rec.chunks, rec.bytes_stored, rec.frames_sampled) == (1, first, 8)
    with pytest.raises(ChunkExists):
        store.commit_chunk(make_chunk("s", 0, seed=123))  # same index, other content
    assert store.get_stream("s").chunks == 1


def test_commit_rejects_other_retrieval_dim(store, redis_client, make_chunk) -> None:
    store.create_stream(StreamRecord(stream_id="s"))
    store.commit_chunk(make_chunk("s", 0, retrieval_dim=16))
    before = keys_of(redis_client, "*")
    with pytest.raises(ValueError, match="retrieval dim"):
        store.commit_chunk(make_chunk("s", 1, retrieval_dim=32))
    assert keys_of(redis_client, "*") == before and store.get_stream("s").chunks == 1


def test_get_missing_chunks_raises(store, make_chunk) -> None:
    store.create_stream(StreamRecord(stream_id="s"))
    store.commit_chunk(make_chunk("s", 0))
    with pytest.raises(ChunkNotFound, match=r"\[1, 5\]"):
        store.get_chunks("s", [0, 1, 5])
    with pytest.raises(StreamNotFound):
        store.get_chunks("other", [0])


def test_a_blob_under_the_wrong_key_is_corrupt(store, redis_client, make_chunk) -> None:
    store.create_stream(StreamRecord(stream_id="s"))
    store.commit_chunk(make_chunk("s", 0))
    store.commit_chunk(make_chunk("s", 1))
    redis_client.set("lw:{s}:chunk:1", redis_client.get("lw:{s}:chunk:0"))
    with pytest.raises(CorruptData, match="holds chunk 0"):
        store.get_chunks("s", [1])
    redis_client.set("lw:{s}:chunk:1", b"\x00" * 40)
    with pytest.raises(CorruptData):
        store.get_chunk("s", 1)


def test_delete_stream_removes_every_key_and_only_those(store, redis_client, make_chunk) -> None:
    for sid in ("a", "a.b", "b"):  # "a.b" shares a prefix with "a" but is another stream
        store.create_stream(StreamRecord(stream_id=sid))
        store.add_counters(sid, IngestCounters(frames_decoded=1))
        for i in range(3):
            store.commit_chunk(make_chunk(sid, i))
    others = keys_of(redis_client, "lw:{a.b}:*") | keys_of(redis_client, "lw:{b}:*")
    doomed = keys_of(redis_client, "lw:{a}:*")
    assert len(doomed) == 4 + 3  # record, spans, vectors, commit times + three chunks

    assert store.delete_stream("a") == len(doomed)
    assert keys_of(redis_client, "lw:{a}:*") == set()
    assert keys_of(redis_client, "lw:{a.b}:*") | keys_of(redis_client, "lw:{b}:*") == others
    assert redis_client.smembers("lw:streams") == {b"a.b", b"b"}
    assert store.get_stream("a") is None and [r.stream_id for r in store.list_streams()] == ["a.b", "b"]
    assert store.delete_stream("a") == 0  # idempotent
    # the id is free again
    store.create_stream(StreamRecord(stream_id="a"))
    assert store.chunk_spans("a") == []


def test_concurrent_commits_and_counters_are_all_counted(store, make_chunk) -> None:
    store.create_stream(StreamRecord(stream_id="s"))
    n_threads, per_thread = 4, 10
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for k in range(per_thread):
                store.commit_chunk(make_chunk("s", t * per_thread + k), IngestCounters(frames_sampled=8))
                store.add_counters("s", IngestCounters(frames_decoded=2))
        except BaseException as e:  # surfaced below; a thread's exception is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    rec = store.get_stream("s")
    total = n_threads * per_thread
    assert (rec.chunks, rec.frames_sampled, rec.frames_decoded) == (total, 8 * total, 2 * total)
    assert [s.index for s in store.chunk_spans("s")] == list(range(total))


# --- connection ------------------------------------------------------------------------------------------


def test_open_store_schemes_and_client_checks(redis_url) -> None:
    with pytest.raises(ValueError, match="scheme"):
        open_store("http://localhost:6379")
    with pytest.raises(ValueError, match="decode_responses"):
        RedisChunkStore(redis.Redis.from_url(redis_url, decode_responses=True))
    with open_store(redis_url) as s:
        assert s.ping()


def test_unreachable_redis_is_store_unavailable(tmp_path) -> None:
    s = open_store(f"unix://{tmp_path}/nothing.sock", retry=Retry(NoBackoff(), 0))
    assert s.ping() is False
    with pytest.raises(StoreUnavailable):
        s.get_stream("cam")
    s.close()

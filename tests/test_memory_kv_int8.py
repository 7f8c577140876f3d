"""int8 K/V storage: quantization bounds, the version-2 blob, and the per-stream kv_storage setting."""

from __future__ import annotations

import dataclasses
import json

import pytest
import safetensors.torch
import torch

from longwatch.memory.kvquant import dequantize_int8, quantize_int8
from longwatch.memory.records import CorruptData
from longwatch.memory.serialization import chunk_from_bytes, chunk_to_bytes
from longwatch.memory.store import RedisChunkStore, StreamKeys
from longwatch.proto.streams import StreamRecord


@pytest.mark.parametrize("granularity", ["token", "channel"])
def test_int8_round_trip_is_within_half_a_step(granularity) -> None:
    x = torch.randn(2, 3, 7, 16) * torch.logspace(-3, 2, 16)  # channels of very different ranges
    codes, scale = quantize_int8(x, granularity)
    assert codes.dtype == torch.int8 and scale.dtype == torch.float16
    assert scale.shape == ((2, 3, 7, 1) if granularity == "token" else (2, 3, 1, 16))
    err = (dequantize_int8(codes, scale) - x).abs()
    assert bool((err <= scale.float() * 0.5 + 1e-6).all())
    assert int(codes.abs().max()) <= 127


def test_int8_handles_zeros_and_huge_values() -> None:
    x = torch.zeros(1, 1, 2, 4)
    x[0, 0, 1] = torch.tensor([1e7, -1e7, 3.0, 0.0])  # scale over fp16's range: fp32 scales
    codes, scale = quantize_int8(x)
    assert scale.dtype == torch.float32
    assert torch.equal(dequantize_int8(codes, scale)[0, 0, 0], torch.zeros(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_int8(torch.full((1, 1, 1, 4), float("nan")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_blob_round_trips_close_and_is_smaller(make_chunk, dtype) -> None:
    chunk = make_chunk("cam-1", 2, dtype=dtype, n_kept=32, head_dim=64)
    blob = chunk_to_bytes(chunk, "int8")
    back = chunk_from_bytes(blob)
    assert back.keys.dtype == torch.float32  # dequantized for answering
    for got, want in ((back.keys, chunk.keys), (back.values, chunk.values)):
        step = want.float().abs().amax(dim=-1, keepdim=True) / 127
        assert bool(((got - want.float()).abs() <= step * 0.51 + 1e-6).all())
    assert torch.equal(back.positions, chunk.positions) and torch.equal(back.retrieval, chunk.retrieval)
    assert back.frame_times == chunk.frame_times and back.start_s == chunk.start_s
    kv_float = 2 * chunk.keys.numel() * chunk.keys.element_size()
    assert len(chunk_to_bytes(chunk)) - len(blob) > kv_float * (1 - 1 / chunk.keys.element_size()) * 0.9
    assert chunk_to_bytes(chunk, "int8") == blob  # deterministic: a retried commit is recognised


def test_float_blobs_keep_format_version_1(make_chunk) -> None:
    blob = chunk_to_bytes(make_chunk("s", 0))
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    assert json.loads(header["__metadata__"]["longwatch.chunk"])["version"] == 1
    with pytest.raises(ValueError, match="kv_storage"):
        chunk_to_bytes(make_chunk("s", 0), "int4")


def test_int8_blob_with_bad_scales_is_corrupt(make_chunk) -> None:
    blob = chunk_to_bytes(make_chunk("s", 0), "int8")
    header_len = int.from_bytes(blob[:8], "little")
    metadata = json.loads(blob[8 : 8 + header_len])["__metadata__"]
    tensors = safetensors.torch.load(blob)
    tensors["key_scales"] = tensors["key_scales"][:, :, :1].contiguous()  # neither per-token nor per-channel
    with pytest.raises(CorruptData, match="int8 keys"):
        chunk_from_bytes(safetensors.torch.save(tensors, metadata=metadata))
    del tensors["key_scales"]
    with pytest.raises(CorruptData, match="missing tensors"):
        chunk_from_bytes(safetensors.torch.save(tensors, metadata=metadata))


def test_stream_keeps_the_kv_storage_it_was_created_with(redis_client, make_chunk) -> None:
    int8_store = RedisChunkStore(redis_client, kv_storage="int8")
    float_store = RedisChunkStore(redis_client)
    int8_store.create_stream(StreamRecord("q"))
    float_store.create_stream(StreamRecord("f"))
    assert int8_store.get_stream("q").kv_storage == "int8"
    assert float_store.get_stream("f").kv_storage == "float"
    chunk = make_chunk("q", 0, n_kept=16, head_dim=32)
    written = float_store.commit_chunk(chunk)  # another store's setting does not matter: the stream's does
    blob = redis_client.get(StreamKeys("q").chunk(0))
    assert blob == chunk_to_bytes(chunk, "int8")
    assert written == float_store.get_stream("q").bytes_stored
    assert float_store.commit_chunk(chunk) == 0  # a replayed commit is still recognised
    back = float_store.get_chunk("q", 0)
    assert torch.allclose(back.keys, chunk.keys, atol=float(chunk.keys.abs().max()) / 127)
    f_chunk = make_chunk("f", 0)
    int8_store.commit_chunk(f_chunk)
    assert redis_client.get(StreamKeys("f").chunk(0)) == chunk_to_bytes(f_chunk)


def test_records_from_before_kv_storage_read_as_float(store, redis_client, make_chunk) -> None:
    store.create_stream(StreamRecord("old"))
    redis_client.hdel(StreamKeys("old").record, "kv_storage")  # as written before the field existed
    assert store.get_stream("old").kv_storage == "float"
    store.commit_chunk(make_chunk("old", 0))
    assert redis_client.get(StreamKeys("old").chunk(0)) == chunk_to_bytes(make_chunk("old", 0))
    with pytest.raises(ValueError, match="kv_storage"):
        RedisChunkStore(redis_client, kv_storage="fp8")
    with pytest.raises(ValueError, match="kv_storage"):
        dataclasses.replace(StreamRecord("x"), kv_storage="fp8")

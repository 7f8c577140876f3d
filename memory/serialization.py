"""ChunkCache <-> bytes, as safetensors: tensors by name, scalars as one JSON object in the header metadata.

K/V are stored as computed (float32, bf16, fp16: no up-cast) with kv_storage "float", or as symmetric
int8 codes with per-token fp16 scales with kv_storage "int8" (memory/kvquant.py; tensors
`key_scales` and `value_scales` beside the codes), which a load dequantizes to float32. Float
blobs keep format version 1 byte for byte; int8 blobs are version 2. A reader takes both.

Nothing here is ever pickled or unpickled: a blob from Redis is parsed as a safetensors header
(JSON) plus raw little-endian tensor data, and every field is checked before a ChunkCache is built,
so a corrupt or foreign blob fails with CorruptData instead of surfacing later as a shape error
inside attention.

The scalars sit under a single metadata key on purpose: safetensors writes a multi-entry metadata
map in random (hash) order, and one entry keeps the bytes deterministic, so the same chunk always
serialises to the same blob (the store relies on that to recognise a retried commit).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from longwatch.memory.chunk import ChunkCache
from longwatch.memory.kvquant import check_scales, dequantize_int8, quantize_int8
from longwatch.memory.records import CorruptData, Picture
from longwatch.proto.streams import KV_STORAGE

META_KEY = "longwatch.chunk"  # the one safetensors metadata entry: JSON of the scalars and "version"
FORMAT_VERSION = 1  # float K/V
INT8_FORMAT_VERSION = 2  # int8 K/V codes plus `key_scales` / `value_scales`
# K/V dtypes a float blob may carry, stored as given (no up-cast: bf16 stays 2 bytes per value).
KV_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Per-token scales for both keys and values: bench/kv_quant.py measured them against per-channel
# key scales on answers (logit drift, greedy agreement) and bytes.
INT8_GRANULARITY = {"keys": "token", "values": "token"}
_TENSORS = ("keys", "values", "positions", "retrieval")
_SCALE_TENSORS = ("key_scales", "value_scales")
_SCALARS = (
    "stream_id",
    "index",
    "start_s",
    "end_s",
    "frame_times",
    "tokens_seen",
    "tokens_kept",
    "mode",
    "alpha",
)
PICTURES_META_KEY = "longwatch.pictures"  # a cold chunk's pictures, packed into one blob
PICTURES_FORMAT_VERSION = 1
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def chunk_to_bytes(chunk: ChunkCache, kv_storage: str = "float") -> bytes:
    """Serialise a chunk, K/V as computed ("float") or as int8 codes and scales ("int8").

    Tensors are moved to CPU and made contiguous (a copy if they were not).
    """
    if kv_storage not in KV_STORAGE:
        raise ValueError(f"kv_storage must be one of {KV_STORAGE}, got {kv_storage!r}")
    if chunk.keys.dtype not in KV_DTYPES:
        raise ValueError(f"K/V dtype must be one of {_dtype_names()}, got {chunk.keys.dtype}")
    if chunk.values.dtype != chunk.keys.dtype:
        raise ValueError(f"keys are {chunk.keys.dtype} but values are {chunk.values.dtype}")
    if chunk.retrieval.dim() != 1:
        raise ValueError(f"retrieval must be 1-D (retrieval_dim,), got {tuple(chunk.retrieval.shape)}")
    tensors = {
        "keys": _cpu(chunk.keys),  # (layers, kv_heads, n_kept, head_dim)
        "values": _cpu(chunk.values),  # (layers, kv_heads, n_kept, head_dim)
        "positions": _cpu(chunk.positions).to(torch.int64),  # (n_kept,)
        "retrieval": _cpu(chunk.retrieval).to(torch.float32),  # (retrieval_dim,)
    }
    version = FORMAT_VERSION
    if kv_storage == "int8":
        version = INT8_FORMAT_VERSION
        tensors["keys"], tensors["key_scales"] = quantize_int8(tensors["keys"], INT8_GRANULARITY["keys"])
        tensors["values"], tensors["value_scales"] = quantize_int8(
            tensors["values"], INT8_GRANULARITY["values"]
        )
    scalars = {
        "stream_id": chunk.stream_id,
        "index": int(chunk.index),
        "start_s": float(chunk.start_s),
        "end_s": float(chunk.end_s),
        "frame_times": [float(t) for t in chunk.frame_times],
        "tokens_seen": int(chunk.tokens_seen),
        "tokens_kept": int(chunk.tokens_kept),
        "mode": chunk.mode,
        "alpha": int(chunk.alpha),
    }
    meta = json.dumps({"version": version, **scalars}, sort_keys=True)
    return save_safetensors_bytes(tensors, metadata={META_KEY: meta})


def chunk_from_bytes(data: bytes, *, name: str = "chunk") -> ChunkCache:
    """Parse and validate a blob written by chunk_to_bytes; ``name`` (e.g. the Redis key) goes in errors."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptData(f"{name}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    metadata = _read_metadata(data, name)
    try:
        tensors = load_safetensors_bytes(data)  # parses a header and raw buffers; no pickle
    except Exception as e:  # any parse failure of foreign bytes is corruption, whatever its type
        raise CorruptData(f"{name}: not a valid safetensors blob ({_one_line(e)})") from None
    expected = _TENSORS + (_SCALE_TENSORS if metadata["version"] == INT8_FORMAT_VERSION else ())
    missing = [t for t in expected if t not in tensors]
    if missing:
        raise CorruptData(f"{name}: missing tensors {missing}, has {sorted(tensors)}")
    if metadata["version"] == INT8_FORMAT_VERSION:
        _dequantize(tensors, name)
    _check_tensors(tensors, name)
    scalars = _parse_scalars(metadata, name)
    try:
        return ChunkCache(
            keys=tensors["keys"],
            values=tensors["values"],
            positions=tensors["positions"],
            retrieval=tensors["retrieval"],
            **scalars,
        )
    except (ValueError, TypeError) as e:
        raise CorruptData(f"{name}: fields do not form a chunk ({_one_line(e)})") from None


def pictures_to_bytes(index: int, pictures: Sequence[Picture]) -> bytes:
    """Chunk `index`'s pictures as one blob, for the cold tier: each image a uint8 tensor named by its
    position, the chunk and the times in the metadata (one entry, so the bytes are deterministic)."""
    tensors = {
        str(n): torch.frombuffer(bytearray(p.image), dtype=torch.uint8) for n, p in enumerate(pictures)
    }
    meta = {
        "version": PICTURES_FORMAT_VERSION,
        "index": int(index),
        "times": [float(p.time_s) for p in pictures],
    }
    return save_safetensors_bytes(tensors, metadata={PICTURES_META_KEY: json.dumps(meta)})


def pictures_from_bytes(data: bytes, *, index: int, name: str = "pictures") -> list[Picture]:
    """Parse a blob written by pictures_to_bytes for chunk `index`; anything else is CorruptData."""
    data = bytes(data)
    meta = safetensors_metadata(data, PICTURES_META_KEY, name)
    times = meta.get("times")
    if (
        meta.get("version") != PICTURES_FORMAT_VERSION
        or meta.get("index") != index
        or not isinstance(times, list)
    ):
        raise CorruptData(f"{name}: not the pictures of chunk {index} ({str(meta)[:80]})")
    try:
        tensors = load_safetensors_bytes(data)
        images = [tensors[str(n)] for n in range(len(times))]
        return [
            Picture(index, float(t), bytes(image.numpy().tobytes()))
            for t, image in zip(times, images, strict=True)
        ]
    except Exception as e:  # any parse failure of foreign bytes is corruption, whatever its type
        raise CorruptData(f"{name}: not a valid pictures blob ({_one_line(e)})") from None


def vector_to_bytes(vector: np.ndarray | torch.Tensor) -> bytes:
    """A 1-D retrieval vector as little-endian float32 bytes (4 bytes per dimension)."""
    if isinstance(vector, torch.Tensor):
        vector = vector.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(vector)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"retrieval vector must be 1-D and non-empty, got shape {arr.shape}")
    arr = arr.astype("<f4", copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("retrieval vector has NaN or inf entries")
    return arr.tobytes()


def vector_from_bytes(data: bytes, *, name: str = "vector") -> np.ndarray:
    """Inverse of vector_to_bytes: a writable (dim,) float32 array in native byte order."""
    if len(data) == 0 or len(data) % 4:
        raise CorruptData(f"{name}: expected a non-empty multiple of 4 bytes (float32), got {len(data)}")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


# --- helpers ------------------------------------------------------------------------------------------


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def _dtype_names() -> list[str]:
    return [str(d).removeprefix("torch.") for d in KV_DTYPES]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}"


def safetensors_metadata(data: bytes, key: str, name: str) -> dict[str, object]:
    """The JSON object under metadata entry `key` of a safetensors blob, read without loading tensors.

    The header is an 8-byte little-endian length and that many bytes of JSON. Anything else is
    CorruptData naming `name` (e.g. the Redis key). Used for chunks and live ingest state alike.
    """
    if len(data) < 8:
        raise CorruptData(f"{name}: {len(data)} bytes is too short for a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > min(_MAX_HEADER, len(data) - 8):
        raise CorruptData(f"{name}: header length {n} exceeds the {len(data) - 8} bytes that follow")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptData(f"{name}: header is not JSON ({_one_line(e)})") from None
    entries = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(entries, dict) or not isinstance(entries.get(key), str):
        raise CorruptData(f"{name}: safetensors metadata has no {key!r} entry")
    try:
        meta = json.loads(entries[key])
    except json.JSONDecodeError as e:
        raise CorruptData(f"{name}: {key!r} metadata is not JSON ({_one_line(e)})") from None
    if not isinstance(meta, dict):
        raise CorruptData(f"{name}: {key!r} metadata should be a JSON object, got {type(meta).__name__}")
    return meta


def _read_metadata(data: bytes, name: str) -> dict[str, object]:
    """A chunk blob's scalars, of a format version this reader takes."""
    meta = safetensors_metadata(data, META_KEY, name)
    if meta.get("version") not in (FORMAT_VERSION, INT8_FORMAT_VERSION):
        raise CorruptData(
            f"{name}: chunk format version {meta.get('version')!r} is not one of the supported "
            f"{FORMAT_VERSION}, {INT8_FORMAT_VERSION}"
        )
    return meta


def _dequantize(t: dict[str, torch.Tensor], name: str) -> None:
    """Replace int8 `keys`/`values` by their float32 values (in place), after checking the scales."""
    for codes, scales in (("keys", "key_scales"), ("values", "value_scales")):
        problem = check_scales(t[codes], t[scales])
        if problem is not None:
            raise CorruptData(f"{name}: int8 {codes}: {problem}")
        t[codes] = dequantize_int8(t.pop(codes), t.pop(scales))


def _check_tensors(t: dict[str, torch.Tensor], name: str) -> None:
    keys, values, positions, retrieval = (t[k] for k in _TENSORS)
    if keys.dtype not in KV_DTYPES or values.dtype != keys.dtype:
        raise CorruptData(
            f"{name}: K/V dtypes should be one of {_dtype_names()} and equal, got {keys.dtype}/{values.dtype}"
        )
    if positions.dtype != torch.int64 or positions.dim() != 1:
        raise CorruptData(
            f"{name}: positions should be 1-D int64, got {positions.dtype} {tuple(positions.shape)}"
        )
    if retrieval.dtype != torch.float32 or retrieval.dim() != 1:
        raise CorruptData(
            f"{name}: retrieval should be 1-D float32, got {retrieval.dtype} {tuple(retrieval.shape)}"
        )


_SCALAR_TYPES: dict[str, type] = {
    "stream_id": str,
    "index": int,
    "start_s": float,
    "end_s": float,
    "frame_times": list,
    "tokens_seen": int,
    "tokens_kept": int,
    "mode": str,
    "alpha": int,
}


def _parse_scalars(meta: dict[str, object], name: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for field in _SCALARS:
        if field not in meta:
            raise CorruptData(f"{name}: metadata has no {field!r}")
        out[field] = _coerce(field, meta[field], name)
    return out


def _coerce(field: str, value: object, name: str) -> object:
    want = _SCALAR_TYPES[field]
    bad = CorruptData(f"{name}: metadata {field!r} should be {want.__name__}, got {value!r:.60}")
    if want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if want is list:
        if not isinstance(value, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise bad
        return [float(v) for v in value]
    if not isinstance(value, want):
        raise bad
    return value

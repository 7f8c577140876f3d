"""What the store knows about a stream besides its chunks, and the one exception tree of the memory layer.

A stream record lives in a Redis hash of strings (``lw:{<id>}:stream``). Counters are stored as
decimal integers so ingest can bump them with HINCRBY without reading the record first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum

MAX_STREAM_ID_LEN = 128
KV_STORAGE = ("float", "int8")  # how a stream's chunks keep their K/V (memory/serialization.py)
LEGACY_KV_STORAGE = "float"  # what a stream recorded before kv_storage existed holds
_STREAM_ID_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_STREAM_ID_LEN}}}")


# --- errors -------------------------------------------------------------------------------------------


class StoreError(Exception):
    """Base of every error the memory layer raises on purpose; the gRPC edge maps subclasses to codes."""


class StreamExists(StoreError):
    """create_stream on an id that already has a record (ALREADY_EXISTS at the edge)."""


class StreamNotFound(StoreError):
    """An operation on a stream that has no record (NOT_FOUND at the edge)."""


class ChunkExists(StoreError):
    """commit_chunk of an index that is already committed: committing twice would double-count."""


class ChunkNotFound(StoreError):
    """A chunk index that the stream does not have (or not yet: it is not committed)."""


class CorruptChunk(StoreError):
    """Bytes in the store that do not decode to what they claim to be (DATA_LOSS at the edge)."""


class StoreUnavailable(StoreError):
    """Redis could not be reached, or the embedded redis-server could not be started (UNAVAILABLE)."""


class InvalidStreamId(StoreError, ValueError):
    """A stream id outside the allowed alphabet; also a ValueError, since it is bad input."""


def validate_stream_id(stream_id: object) -> str:
    """Return ``stream_id`` if it is 1-128 chars of [A-Za-z0-9._-], else raise InvalidStreamId.

    The id is embedded in Redis keys inside a Cluster hash tag ``{...}`` and in glob patterns,
    so braces, glob metacharacters, separators and whitespace are all refused here, once.
    """
    if not isinstance(stream_id, str):
        raise InvalidStreamId(
            f"stream id must be a str of 1-{MAX_STREAM_ID_LEN} chars from [A-Za-z0-9._-], "
            f"got {type(stream_id).__name__}"
        )
    if _STREAM_ID_RE.fullmatch(stream_id) is None:
        shown = stream_id if len(stream_id) <= 40 else stream_id[:40] + "..."
        raise InvalidStreamId(
            f"stream id must be 1-{MAX_STREAM_ID_LEN} chars from [A-Za-z0-9._-], "
            f"got {shown!r} ({len(stream_id)} chars)"
        )
    return stream_id


# --- records ------------------------------------------------------------------------------------------


class StreamState(str, Enum):
    """Where a stream is in its life.

    INGESTING: an archive being read; READY: no one is feeding it and everything is committed
    (a finished archive, or a live stream between connections); LIVE: a connection (WebRTC
    peer or IngestFrames call) is feeding it now.
    """

    INGESTING = "ingesting"
    READY = "ready"
    LIVE = "live"


# Fields that ingest bumps with HINCRBY (IngestCounters) and the ones commit_chunk bumps itself.
COUNTER_FIELDS = (
    "frames_decoded",
    "frames_sampled",
    "frames_kept",
    "tokens_seen",
    "tokens_kept",
    "frames_dropped",
)


@dataclass
class IngestCounters:
    """Deltas to add to a stream's counters: what one batch of frames (or one chunk) contributed."""

    frames_decoded: int = 0
    frames_sampled: int = 0
    frames_kept: int = 0
    tokens_seen: int = 0
    tokens_kept: int = 0
    frames_dropped: int = 0

    def items(self) -> list[tuple[str, int]]:
        """(field, delta) pairs with a non-zero delta: zero deltas cost a round trip for nothing."""
        return [(name, int(getattr(self, name))) for name in COUNTER_FIELDS if getattr(self, name)]


@dataclass
class StreamRecord:
    """One stream as the store sees it; ``to_hash``/``from_hash`` are its Redis form.

    duration_s: end of the last committed chunk (seconds of video covered).
    chunks, bytes_stored: committed chunks and the bytes their blobs and vectors take in Redis.
    kv_storage: how the stream's chunks keep their K/V, "float" or "int8", fixed when the stream
        is created ("" asks the store for its default); a record written before the field
        existed reads as "float", which is what those streams hold.
    """

    stream_id: str
    source: str = ""
    state: StreamState = StreamState.INGESTING
    fps: float = 1.0
    model: str = ""
    created_unix: float = 0.0
    updated_unix: float = 0.0
    frames_decoded: int = 0
    frames_sampled: int = 0
    frames_kept: int = 0
    tokens_seen: int = 0
    tokens_kept: int = 0
    frames_dropped: int = 0
    chunks: int = 0
    bytes_stored: int = 0
    duration_s: float = 0.0
    kv_storage: str = ""

    def __post_init__(self) -> None:
        validate_stream_id(self.stream_id)
        self.state = StreamState(self.state)
        if self.kv_storage and self.kv_storage not in KV_STORAGE:
            raise ValueError(f"kv_storage must be one of {KV_STORAGE}, got {self.kv_storage!r}")

    def to_hash(self) -> dict[str, str]:
        """Every field as a string; floats with repr so they round-trip exactly."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, StreamState):
                out[f.name] = value.value
            elif isinstance(value, float):
                out[f.name] = repr(value)
            else:
                out[f.name] = str(value)
        return out

    @classmethod
    def from_hash(cls, data: Mapping[bytes | str, bytes | str]) -> StreamRecord:
        """Parse a hash read with decode_responses=False (bytes) or True (str).

        Unknown fields are ignored (a newer writer may add some); missing ones take defaults,
        except stream_id. A field that does not parse raises StoreError naming it.
        """
        text = {_text(k): _text(v) for k, v in data.items()}
        if "stream_id" not in text:
            raise StoreError(f"stream record has no stream_id field (fields: {sorted(text)[:8]})")
        kwargs: dict[str, object] = {"kv_storage": LEGACY_KV_STORAGE}  # records from before the field
        for f in fields(cls):
            if f.name not in text:
                continue
            raw = text[f.name]
            try:
                kwargs[f.name] = _parse_field(f.name, f.default, raw)
            except ValueError as e:
                raise StoreError(f"stream record field {f.name!r} is not valid: {raw!r} ({e})") from None
        try:
            return cls(**kwargs)  # type: ignore[arg-type]
        except ValueError as e:
            raise StoreError(f"stream record is not valid: {e}") from None


@dataclass(frozen=True)
class ChunkSpan:
    """The time a committed chunk covers: [start_s, end_s) of presentation time."""

    index: int
    start_s: float
    end_s: float


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _parse_field(name: str, default: object, raw: str) -> object:
    if name in ("stream_id", "source", "model", "kv_storage"):
        return raw
    if name == "state":
        return StreamState(raw)
    if isinstance(default, float):
        return float(raw)
    return int(raw)

"""A stream record's Redis form, ingest counters, chunk spans, and the one exception tree of the memory layer.

The record itself (`StreamRecord`, longwatch/proto/streams.py) lives in a Redis hash of strings
(``lw:{<id>}:stream``). Counters are stored as decimal integers so ingest can bump them with
HINCRBY without reading the record first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from longwatch.proto.streams import StreamRecord, StreamState

LEGACY_KV_STORAGE = "float"  # what a stream recorded before kv_storage existed holds


# --- errors -------------------------------------------------------------------------------------------


# How long a chunk commit waits for the replicas it must reach (Redis WAIT; --commit-wait-ms).
DEFAULT_COMMIT_WAIT_MS = 1000


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


class CorruptData(StoreError):
    """Bytes in the store that do not decode to what they claim to be: a chunk blob, a vector, a
    span, a stream record, or a key holding the wrong kind of value (DATA_LOSS at the edge)."""


class StoreUnavailable(StoreError):
    """Redis could not be reached, or the embedded redis-server could not be started (UNAVAILABLE)."""


class LeaseHeld(StoreError):
    """Another replica holds the stream's ingest lease: one writer per stream. Transient: a lease
    whose holder died runs out on its own."""


class LeaseLost(StoreError):
    """This ingest's lease passed to another writer (its fencing token is old): its writes are
    refused, so two replicas never both write one stream."""


class StoreFull(StoreError):
    """Redis refuses writes: it is at maxmemory, or cannot persist (a full disk). Reads go on."""


# --- records ------------------------------------------------------------------------------------------


@dataclass
class IngestCounters:
    """Deltas to add to a stream's counters: what one batch of frames (or one chunk) contributed."""

    frames_decoded: int = 0
    frames_sampled: int = 0
    frames_kept: int = 0
    tokens_seen: int = 0
    tokens_kept: int = 0
    frames_dropped: int = 0
    frames_lost: int = 0

    def items(self) -> list[tuple[str, int]]:
        """(field, delta) pairs with a non-zero delta: zero deltas cost a round trip for nothing."""
        return [(f.name, int(getattr(self, f.name))) for f in fields(self) if getattr(self, f.name)]


def record_to_hash(record: StreamRecord) -> dict[str, str]:
    """Every field as a string; floats with repr so they round-trip exactly."""
    out: dict[str, str] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, StreamState):
            out[f.name] = value.value
        elif isinstance(value, float):
            out[f.name] = repr(value)
        else:
            out[f.name] = str(value)
    return out


def record_from_hash(data: Mapping[bytes | str, bytes | str]) -> StreamRecord:
    """Parse a hash read with decode_responses=False (bytes) or True (str).

    Unknown fields are ignored (a newer writer may add some); missing ones take defaults,
    except stream_id; a record written before kv_storage existed reads as "float", which is what
    those streams hold. A field that does not parse raises CorruptData naming it.
    """
    try:
        text = {_text(k): _text(v) for k, v in data.items()}
    except UnicodeDecodeError as e:
        raise CorruptData(f"stream record holds bytes that are not UTF-8 ({e.reason})") from None
    if "stream_id" not in text:
        raise CorruptData(f"stream record has no stream_id field (fields: {sorted(text)[:8]})")
    kwargs: dict[str, object] = {"kv_storage": LEGACY_KV_STORAGE}  # records from before the field
    for f in fields(StreamRecord):
        if f.name not in text:
            continue
        raw = text[f.name]
        try:
            kwargs[f.name] = _parse_field(f.name, f.default, raw)
        except ValueError as e:
            raise CorruptData(f"stream record field {f.name!r} is not valid: {raw!r} ({e})") from None
    try:
        return StreamRecord(**kwargs)  # type: ignore[arg-type]
    except ValueError as e:
        raise CorruptData(f"stream record is not valid: {e}") from None


@dataclass(frozen=True)
class Picture:
    """A small picture kept with a chunk: the sampled frame at time_s of chunk `index` (JPEG bytes)."""

    index: int
    time_s: float
    image: bytes


@dataclass(frozen=True)
class ChunkAge:
    """A committed chunk as retention sees it: when it was committed and what it takes."""

    index: int
    committed_unix: float
    bytes: int
    cold: bool = False  # its blob is in the cold tier, not in Redis


@dataclass(frozen=True)
class ChunkSpan:
    """The time a committed chunk covers: [start_s, end_s) of presentation time."""

    index: int
    start_s: float
    end_s: float


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _parse_field(name: str, default: object, raw: str) -> object:
    if name in ("stream_id", "source", "model", "kv_storage", "source_path"):
        return raw
    if name == "state":
        return StreamState(raw)
    if isinstance(default, float):
        return float(raw)
    count = int(raw)
    if not 0 <= count < 2**63:
        raise ValueError("a count must be in [0, 2**63)")
    return count

"""A stream as both ends see it: the one Python definition of StreamInfo's fields.

`StreamRecord` is what the service stores (memory/records.py keeps it as a Redis hash) and what
the client returns (`LongWatchClient.get_stream`, as `StreamSummary`); `to_proto`/`from_proto`
cross the wire as `StreamInfo` (longwatch.proto), whose fields are these by name.
tests/test_proto_stubs.py fails if the two lists ever differ.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any

from longwatch.proto import longwatch_pb2 as pb

MAX_STREAM_ID_LEN = 128
KV_STORAGE = ("float", "int8")  # how a stream's chunks keep their K/V (memory/serialization.py)
_STREAM_ID_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_STREAM_ID_LEN}}}")

# Every stream belongs to a tenant. The service stores it under "<tenant>~<id>" ("~" is outside
# the ids' alphabet, so no id a caller sends can name another tenant's stream); the local tenant,
# the one a server without keys serves, keeps bare ids, so data from before tenants is its own.
LOCAL_TENANT = "local"
TENANT_SEPARATOR = "~"
MAX_TENANT_LEN = 32
_TENANT_RE = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{MAX_TENANT_LEN - 1}}}")


class InvalidStreamId(ValueError):
    """A stream id outside the allowed alphabet (INVALID_ARGUMENT at the edge)."""


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
    if stream_id in (".", ".."):  # a path's own names: in a URL or a folder they would be read as such
        raise InvalidStreamId(f"stream id may not be {stream_id!r}")
    if _STREAM_ID_RE.fullmatch(stream_id) is None:
        shown = stream_id if len(stream_id) <= 40 else stream_id[:40] + "..."
        raise InvalidStreamId(
            f"stream id must be 1-{MAX_STREAM_ID_LEN} chars from [A-Za-z0-9._-], "
            f"got {shown!r} ({len(stream_id)} chars)"
        )
    return stream_id


def validate_tenant(tenant: object) -> str:
    """Return ``tenant`` if it is 1-32 chars of [a-z0-9_-] starting with a letter or digit."""
    if not isinstance(tenant, str) or _TENANT_RE.fullmatch(tenant) is None:
        raise ValueError(
            f"tenant must be 1-{MAX_TENANT_LEN} chars from [a-z0-9_-], starting with a letter or digit; "
            f"got {tenant!r:.60}"
        )
    return tenant


def stored_stream_id(tenant: str, stream_id: str) -> str:
    """The id a tenant's stream is stored under: "<tenant>~<id>", or the bare id for the local tenant."""
    validate_stream_id(stream_id)
    if validate_tenant(tenant) == LOCAL_TENANT:
        return stream_id
    return f"{tenant}{TENANT_SEPARATOR}{stream_id}"


def split_stored_id(stored: str) -> tuple[str, str]:
    """(tenant, stream id) of a stored id; raises InvalidStreamId if it is neither form."""
    tenant, sep, stream_id = stored.rpartition(TENANT_SEPARATOR) if isinstance(stored, str) else ("", "", "")
    if not sep:
        return LOCAL_TENANT, validate_stream_id(stored)
    try:
        validate_tenant(tenant)
    except ValueError as e:
        raise InvalidStreamId(f"stored stream id {stored!r:.80} has no valid tenant: {e}") from None
    if tenant == LOCAL_TENANT:
        raise InvalidStreamId(f"stored stream id {stored!r:.80}: the local tenant's ids are bare")
    return tenant, validate_stream_id(stream_id)


def validate_stored_id(stored: object) -> str:
    """Return a stored id (bare, or "<tenant>~<id>") if it is one, else raise InvalidStreamId."""
    if not isinstance(stored, str):
        validate_stream_id(stored)  # raises, naming the type
    split_stored_id(stored)  # type: ignore[arg-type]
    return stored  # type: ignore[return-value]


class StreamState(str, Enum):
    """Where a stream is in its life.

    INGESTING: an archive being read; READY: no one is feeding it and everything is committed
    (a finished archive, or a live stream between connections); LIVE: a connection (WebRTC
    peer or IngestFrames call) is feeding it now; INTERRUPTED: an archive whose ingest stopped
    part way, its committed chunks answerable, resumable. UNSPECIFIED: what a client shows for a
    state its stubs do not know (a newer server's).
    """

    UNSPECIFIED = "unspecified"
    INGESTING = "ingesting"
    READY = "ready"
    LIVE = "live"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:  # "ready", also in f-strings (Python 3.11 would say StreamState.READY)
        return self.value

    def to_proto(self) -> int:
        return int(pb.StreamState.Value(f"STREAM_STATE_{self.name}"))

    @classmethod
    def from_proto(cls, value: int) -> StreamState:
        try:
            name = str(pb.StreamState.Name(value)).removeprefix("STREAM_STATE_")
        except ValueError:
            return cls.UNSPECIFIED
        return cls[name] if name in cls.__members__ else cls.UNSPECIFIED


@dataclass
class StreamRecord:
    """One stream: where it came from, where it is in its life, what it holds and what it costs.

    source: "file:<name>" for archives, "live:webrtc" or "live:grpc" for live streams.
    model: the fingerprint of the model that made its chunks (another model cannot read them).
    frames_kept: sampled frames that kept more tokens than the one DiffFP always keeps.
    frames_dropped: sampled frames a live stream dropped because the pipeline was behind.
    frames_lost: sampled frames of a live stream that never reached a chunk because the service
        was killed (counted at its next start).
    chunks, bytes_stored: committed chunks and the bytes their blobs and vectors take in Redis.
    duration_s: end of the last committed chunk (seconds of video covered).
    kv_storage: how the stream's chunks keep their K/V, "float" or "int8", fixed when the stream
        is created ("" asks the store for its default).
    retention_age_s, retention_bytes: the stream's own retention (0: its tenant's, else the
        server's); what a client is shown is the retention in force.
    chunks_dropped, bytes_dropped: what retention removed (`chunks` counts them too).
    bytes_cold: of bytes_stored, what is in the cold tier (on disk) rather than in Redis.
    source_path: the server-side file an archive was read from (an ingest root's), else "".
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
    frames_lost: int = 0
    retention_age_s: float = 0.0
    retention_bytes: int = 0
    chunks_dropped: int = 0
    bytes_dropped: int = 0
    bytes_cold: int = 0
    source_path: str = ""

    def __post_init__(self) -> None:
        validate_stored_id(self.stream_id)  # a client sees bare ids; the service stores tenants' too
        self.state = StreamState(self.state)
        if self.kv_storage and self.kv_storage not in KV_STORAGE:
            raise ValueError(f"kv_storage must be one of {KV_STORAGE}, got {self.kv_storage!r}")

    def to_proto(self) -> pb.StreamInfo:
        values = asdict(self)
        values["state"] = self.state.to_proto()
        return pb.StreamInfo(**values)

    @classmethod
    def from_proto(cls, info: pb.StreamInfo) -> StreamRecord:
        values: dict[str, Any] = {f.name: getattr(info, f.name) for f in fields(cls)}
        values["state"] = StreamState.from_proto(info.state)
        return cls(**values)

    def to_json_dict(self) -> dict[str, Any]:
        """The fields as JSON values, the state by name ("ready"): `streams --json`, GET /api/streams."""
        return {**asdict(self), "state": self.state.value}

"""Retention: a stream keeps its chunks for so long, or up to so many bytes, then drops the oldest.

The retention in force for a stream is its own (SetRetention), else its tenant's (the keys file),
else the server's (`serve --retention-days/--retention-gb`); 0 keeps everything. The storage
sweeper (stream/sweeper.py) applies it every so often to every stream, live ones included: chunks committed longer ago
than the age, and then the oldest while the stream holds more than the bytes, leave the FAISS
index first and then the store in one transaction (blob, vector, span and commit time together),
so an Ask that searched just before finds them gone and answers from the rest. A stream's
`chunks_dropped` and `bytes_dropped` say what went.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from longwatch.memory.index import IndexRegistry
from longwatch.memory.records import ChunkAge
from longwatch.memory.store import ChunkStore
from longwatch.proto.streams import StreamRecord, split_stored_id
from longwatch.stream.auth import Caller, KeyRing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retention:
    """How long (seconds since commit) and how much (bytes) a stream keeps; 0: no limit."""

    max_age_s: float = 0.0
    max_bytes: int = 0

    @property
    def keeps_all(self) -> bool:
        return not self.max_age_s and not self.max_bytes


def retention_for(record: StreamRecord, keys: KeyRing) -> Retention:
    """The retention in force: each of age and bytes from the stream, else its tenant, else the server."""
    limits = keys.limits(split_stored_id(record.stream_id)[0])
    return Retention(
        max_age_s=record.retention_age_s or limits.retention_age_s,
        max_bytes=record.retention_bytes or limits.retention_bytes,
    )


def shown(record: StreamRecord, caller: Caller, keys: KeyRing) -> StreamRecord:
    """A stream as its caller is shown it: by the id it knows, with the retention in force."""
    retention = retention_for(record, keys)
    return replace(
        record,
        stream_id=caller.public_id(record.stream_id),
        retention_age_s=retention.max_age_s,
        retention_bytes=retention.max_bytes,
    )


def chunks_to_drop(ages: list[ChunkAge], retention: Retention, now: float) -> list[int]:
    """Indices past the retention: too old, then the oldest of what stays while it holds too much."""
    drop = []
    kept = sorted(ages, key=lambda a: a.index)
    if retention.max_age_s:
        oldest_kept = now - retention.max_age_s
        drop = [a.index for a in kept if a.committed_unix < oldest_kept]
        kept = [a for a in kept if a.committed_unix >= oldest_kept]
    if retention.max_bytes:
        held = sum(a.bytes for a in kept)
        for a in kept:
            if held <= retention.max_bytes:
                break
            drop.append(a.index)
            held -= a.bytes
    return drop


def apply_retention(
    store: ChunkStore,
    indexes: IndexRegistry,
    record: StreamRecord,
    retention: Retention,
    ages: list[ChunkAge],
    now: float,
) -> list[int]:
    """Drop what `retention` says of one stream, whose chunks are `ages`; returns the indices dropped."""
    drop = chunks_to_drop(ages, retention, now) if not retention.keeps_all else []
    if not drop:
        return []
    indexes.get(record.stream_id).remove(drop)  # first: no Ask finds them from here on
    freed = store.drop_chunks(record.stream_id, drop)
    log.info(
        "retention dropped %d chunks (%d bytes) of %s, up to chunk %d",
        len(drop),
        freed,
        record.stream_id,
        max(drop),
    )
    return drop

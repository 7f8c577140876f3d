"""The storage sweeper: a thread that, every `interval_s`, applies each stream's retention
(stream/retention.py) and moves chunks past the hot window from Redis to the cold tier.

The hot window (`serve --hot-window`, seconds after a chunk's commit; 0: everything stays in Redis)
keeps recent chunks, the ones live questions read, in memory; older ones go to the cold tier
(memory/tier.py: a local folder, fsynced and checksummed), Redis keeping their pointer, span and
retrieval vector, so search is unchanged and Ask reads a cold chunk from disk. Retention runs
first: nothing is moved only to be dropped.
"""

from __future__ import annotations

import logging
import time

from longwatch.memory.index import IndexRegistry
from longwatch.memory.records import ChunkAge, StoreError
from longwatch.memory.store import ChunkStore
from longwatch.proto.streams import StreamRecord
from longwatch.stream.auth import KeyRing
from longwatch.stream.errors import one_line
from longwatch.stream.leases import LeaseKeeper, settle_orphaned_streams
from longwatch.stream.periodic import PeriodicTask
from longwatch.stream.retention import apply_retention, retention_for

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 60.0


def apply_tiering(
    store: ChunkStore, record: StreamRecord, ages: list[ChunkAge], hot_window_s: float, now: float
) -> int:
    """Move one stream's chunks (`ages`) committed more than `hot_window_s` ago to the cold tier;
    returns bytes moved."""
    if hot_window_s <= 0:
        return 0
    old = [a.index for a in ages if not a.cold and a.committed_unix < now - hot_window_s]
    if not old:
        return 0
    moved = store.move_to_cold(record.stream_id, old)
    log.info("moved %d chunks (%d bytes) of %s to the cold tier", len(old), moved, record.stream_id)
    return moved


class StorageSweeper:
    """Applies retention, then the hot window, to every stream every `interval_s` seconds."""

    def __init__(
        self,
        store: ChunkStore,
        indexes: IndexRegistry,
        keys: KeyRing,
        interval_s: float = DEFAULT_INTERVAL_S,
        hot_window_s: float = 0.0,
        leases: LeaseKeeper | None = None,
    ) -> None:
        """leases: this replica's; each pass then also settles streams a replica that died left
        mid-ingest, once their leases ran out (stream/leases.py)."""
        self.leases = leases
        self.store = store
        self.indexes = indexes
        self.keys = keys
        self.interval_s = interval_s
        self.hot_window_s = hot_window_s
        self._task = PeriodicTask("storage sweep", interval_s, self.sweep)

    def start(self) -> StorageSweeper:
        self._task.start()
        return self

    def stop(self) -> None:
        self._task.stop()

    def sweep(self) -> None:
        """One pass over every stream. A stream that fails is logged and skipped (the next pass
        tries it again)."""
        records = self.store.list_streams()
        if self.leases is not None:
            settle_orphaned_streams(self.store, None, busy=set(self.leases.held()), records=records)
        for record in records:
            retention = retention_for(record, self.keys)
            if retention.keeps_all and self.hot_window_s <= 0:
                continue  # nothing to do: not even the stream's chunk list is read
            try:
                now = time.time()
                ages = self.store.chunk_ages(record.stream_id)  # once, for both
                dropped = set(apply_retention(self.store, self.indexes, record, retention, ages, now))
                apply_tiering(
                    self.store, record, [a for a in ages if a.index not in dropped], self.hot_window_s, now
                )
            except StoreError as e:
                log.warning("storage sweep skipped %s this pass: %s", record.stream_id, one_line(e))

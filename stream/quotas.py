"""Each tenant's limits, enforced: streams, live streams, Asks at once, stored bytes.

The limits come from the keys file's tenant entries over the server's defaults (KeyRing.limits);
0 is no limit. They hold across replicas: Asks are counted in Redis (memory/slots.py; a slot of a
replica killed mid-Ask lapses after ASK_SLOT_TTL_S), live streams from the streams' records.
An Ask past its tenant's limit is refused at once rather than queued. Streams and
stored bytes are counted from the store (one read of the tenant's records) when a stream is made
and after each chunk an ingest commits, so two ingests that start in the same instant may pass a
limit together (by one stream each); an ingest that crosses the stored-bytes limit stops after
that chunk, keeping what it committed (interrupted, resumable once there is room).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from longwatch.memory.slots import RedisSlots
from longwatch.memory.store import ChunkStore, RedisChunkStore
from longwatch.proto.streams import StreamState
from longwatch.stream.auth import Caller, KeyRing
from longwatch.stream.errors import QuotaExceeded

ASK_SLOT_TTL_S = 300.0  # an Ask takes seconds; a killed replica's slot frees itself after this


class Quotas:
    def __init__(self, keys: KeyRing, store: ChunkStore) -> None:
        self.keys = keys
        self.store = store
        self.slots = RedisSlots(store.client) if isinstance(store, RedisChunkStore) else None
        self._lock = threading.Lock()
        self._asking: dict[str, int] = defaultdict(int)  # this replica's, for /metrics

    def _count(self, caller: Caller) -> tuple[int, int]:
        """(streams, stored bytes) of the caller's tenant, as the store says now."""
        mine = [r for r in self.store.list_streams() if caller.owns(r.stream_id)]
        return len(mine), sum(r.bytes_stored for r in mine)

    def check_new_stream(self, caller: Caller, stored_id: str) -> None:
        """Before making a stream (a no-op for one that exists): the streams and bytes limits."""
        limits = self.keys.limits(caller.tenant)
        if (
            not (limits.max_streams or limits.max_stored_bytes)
            or self.store.get_stream(stored_id) is not None
        ):
            return
        streams, stored = self._count(caller)
        if limits.max_streams and streams >= limits.max_streams:
            raise QuotaExceeded(
                f"tenant {caller.tenant} has {streams} streams, its limit (max_streams): delete one first"
            )
        self._check_bytes(caller, stored, limits.max_stored_bytes)

    def check_stored(self, caller: Caller) -> None:
        """The stored-bytes limit, before an ingest starts and as it goes."""
        limit = self.keys.limits(caller.tenant).max_stored_bytes
        if limit:
            self._check_bytes(caller, self._count(caller)[1], limit)

    @staticmethod
    def _check_bytes(caller: Caller, stored: int, limit: int) -> None:
        if limit and stored >= limit:
            raise QuotaExceeded(
                f"tenant {caller.tenant} stores {stored / 1e9:.3g} GB, its limit is {limit / 1e9:g} GB "
                "(max_stored_gb): delete streams or raise the limit, then resume"
            )

    def check_live(self, caller: Caller) -> None:
        """Before a live connection starts: the live-streams limit (the streams limit for new ones)."""
        limit = self.keys.limits(caller.tenant).max_live_streams
        if not limit:
            return
        live = sum(
            1 for r in self.store.list_streams() if caller.owns(r.stream_id) and r.state == StreamState.LIVE
        )
        if live >= limit:
            raise QuotaExceeded(
                f"tenant {caller.tenant} has {live} live streams, its limit (max_live_streams)"
            )

    def asks_in_flight(self) -> dict[str, int]:
        with self._lock:
            return {tenant: n for tenant, n in self._asking.items() if n}

    @contextmanager
    def asking(self, caller: Caller) -> Iterator[None]:
        """Around one Ask: the limit on Asks at once (on every replica together), refused at once
        past it."""
        limit = self.keys.limits(caller.tenant).max_concurrent_asks
        key = f"lw:asking:{caller.tenant}"
        slot = None
        with self._lock:
            if limit and self.slots is None and self._asking[caller.tenant] >= limit:
                raise self._asks_exhausted(caller, limit)
            self._asking[caller.tenant] += 1
        try:
            if limit and self.slots is not None:
                slot = self.slots.take(key, limit, ASK_SLOT_TTL_S)
                if slot is None:
                    raise self._asks_exhausted(caller, limit)
            yield
        finally:
            if slot is not None and self.slots is not None:
                self.slots.give_back(key, slot)
            with self._lock:
                self._asking[caller.tenant] -= 1

    @staticmethod
    def _asks_exhausted(caller: Caller, limit: int) -> QuotaExceeded:
        return QuotaExceeded(
            f"tenant {caller.tenant} has {limit} Asks running, its limit (max_concurrent_asks): "
            "try again when one ends"
        )

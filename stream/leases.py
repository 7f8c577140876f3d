"""One writer per stream across replicas: an ingest holds its stream's lease in Redis while it runs.

A replica takes a stream's lease before it writes anything of it (a new archive, a resumed one, a
live connection) and a keeper thread renews every lease it holds a few times per TTL. Each lease
comes with a fencing token; every write the ingest makes carries it, and the store refuses a write
whose token is older than the newest handed out (LeaseLost), so a replica that stalled past its
lease cannot write over the one that took the stream over. A replica that dies simply stops
renewing: its leases run out after the TTL, and another replica (or its own next start) may take
the stream on.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from longwatch.memory.records import LeaseHeld, StoreError
from longwatch.memory.store import ChunkStore
from longwatch.proto.streams import StreamRecord, StreamState
from longwatch.stream.errors import one_line
from longwatch.stream.periodic import PeriodicTask

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL_S = 10.0
RENEWALS_PER_TTL = 4  # a lease survives three missed renewals in a row


def default_replica_id(state_dir: Path) -> str:
    """This machine and state folder: stable across restarts, so a restarted replica takes its own
    streams back at once instead of waiting for their leases to run out."""
    return f"{socket.gethostname()}:{Path(state_dir).resolve()}"


@dataclass
class Lease:
    stream_id: str
    token: int  # the fencing token every write of the ingest carries


class LeaseKeeper:
    """Takes, renews and lets go of this replica's stream leases."""

    def __init__(self, store: ChunkStore, replica_id: str, ttl_s: float = DEFAULT_LEASE_TTL_S) -> None:
        if not 0.5 <= ttl_s <= 3600:
            raise ValueError(f"the lease TTL must be 0.5-3600 seconds, got {ttl_s}")
        self.store = store
        self.replica_id = replica_id
        self.ttl_ms = int(ttl_s * 1000)
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._task = PeriodicTask("lease renewal", ttl_s / RENEWALS_PER_TTL, self._renew_all)

    def start(self) -> LeaseKeeper:
        self._task.start()
        return self

    def stop(self) -> None:
        self._task.stop()

    def take(self, stream_id: str) -> Lease:
        """The stream's lease for this replica; LeaseHeld (a StoreError) while another ingest holds
        it, here or on another replica. (The store hands a replica's own lease over: that is for an
        earlier process of this replica, never for a second ingest in this one, refused here.)"""
        with self._lock:
            if stream_id in self._held:
                raise LeaseHeld(f"stream {stream_id!r} is being ingested by this replica now")
            self._held[stream_id] = Lease(stream_id, 0)  # reserved while Redis is asked
        try:
            lease = Lease(stream_id, self.store.acquire_lease(stream_id, self.replica_id, self.ttl_ms))
        except BaseException:
            with self._lock:
                del self._held[stream_id]
            raise
        with self._lock:
            self._held[stream_id] = lease
        return lease

    def release(self, lease: Lease) -> None:
        with self._lock:
            if self._held.get(lease.stream_id) is lease:
                del self._held[lease.stream_id]
        try:
            self.store.release_lease(lease.stream_id, self.replica_id, lease.token)
        except StoreError as e:  # it runs out on its own
            log.warning("lease of %s not released (%s); it runs out by itself", lease.stream_id, one_line(e))

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._held)

    def _renew_all(self) -> None:
        with self._lock:
            leases = [lease for lease in self._held.values() if lease.token]
        for lease in leases:
            try:
                if not self.store.renew_lease(lease.stream_id, self.replica_id, lease.token, self.ttl_ms):
                    # Its next write is refused (fencing) and the ingest stops there.
                    log.warning(
                        "stream %s: its lease passed to another writer; this ingest stops", lease.stream_id
                    )
            except StoreError as e:  # Redis down: the next round tries again
                log.warning("lease of %s not renewed this round: %s", lease.stream_id, one_line(e))


def settle_orphaned_streams(
    store: ChunkStore,
    own_replica: str | None,
    busy: set[str] | frozenset[str] = frozenset(),
    records: list[StreamRecord] | None = None,
) -> dict[str, tuple[StreamState, int]]:
    """Streams left INGESTING or LIVE by a writer that is gone: INTERRUPTED archives (resumable) and
    READY live streams (their pending frames counted lost). A stream whose lease another replica
    still holds is left alone; own_replica's leases count as gone (at start: an earlier process of
    this replica held them), None for none. `busy`: streams this process ingests now. `records`:
    the streams as just listed, if the caller has them."""
    settled = {}
    for record in store.list_streams() if records is None else records:
        if record.state not in (StreamState.INGESTING, StreamState.LIVE) or record.stream_id in busy:
            continue
        outcome = store.settle_orphaned(record.stream_id, own_replica)
        if outcome is not None:
            settled[record.stream_id] = outcome
            state, lost = outcome
            log.warning(
                "stream %s was left %s by a writer that is gone: %s%s",
                record.stream_id,
                record.state.value,
                state.value,
                f", {lost} sampled frames not yet in a chunk lost" if lost else "",
            )
    return settled

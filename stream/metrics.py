"""What the service does and holds, for Prometheus (GET /metrics on the HTTP port).

Events are counted where they happen, in prometheus-client's process-wide registry (the usual
module-level metrics): frames and chunks as they commit, live frames dropped, commit and Ask
latency, Redis errors met by callers. What the service holds (streams, live connections, stored
bytes per tier, Asks in flight) is read when scraped, per tenant, from each running server
(register_holdings). Tenants are labels; stream ids are not (a label per stream would grow without
bound), the logs carry those.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from longwatch.memory.records import StoreError, StoreFull, StoreUnavailable
from longwatch.memory.store import ChunkStore
from longwatch.proto.streams import split_stored_id

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

FRAMES_SAMPLED = Counter(
    "longwatch_frames_sampled", "Sampled frames committed in chunks", ["tenant", "source"]
)
FRAMES_DROPPED = Counter(
    "longwatch_frames_dropped", "Sampled live frames dropped because the pipeline was behind", ["tenant"]
)
CHUNKS_COMMITTED = Counter(
    "longwatch_chunks_committed", "Chunks committed to the store", ["tenant", "source"]
)
BYTES_COMMITTED = Counter("longwatch_bytes_committed", "Bytes of chunks committed to the store", ["tenant"])
COMMIT_SECONDS = Histogram(
    "longwatch_chunk_commit_seconds", "One chunk's commit, waits for Redis included", buckets=_LATENCY_BUCKETS
)
ASKS = Counter("longwatch_asks", "Asks answered", ["tenant"])
ASK_FIRST_TOKEN_SECONDS = Histogram(
    "longwatch_ask_first_token_seconds", "From an Ask's arrival to its first token", buckets=_LATENCY_BUCKETS
)
ASK_SECONDS = Histogram("longwatch_ask_seconds", "An Ask's whole answer", buckets=_LATENCY_BUCKETS)
REDIS_ERRORS = Counter(
    "longwatch_redis_errors", "Calls that failed on Redis (down, or refusing writes)", ["kind"]
)


def count_store_error(exc: BaseException) -> None:
    """A caller's call failed on Redis: count it by kind (the store's errors, see memory/records.py)."""
    if isinstance(exc, StoreUnavailable):
        REDIS_ERRORS.labels("unavailable").inc()
    elif isinstance(exc, StoreFull):
        REDIS_ERRORS.labels("full").inc()


def tenant_of(stored_id: str) -> str:
    return split_stored_id(stored_id)[0]


def chunk_committed(stored_id: str, source: str, frames: int, written: int, seconds: float) -> None:
    tenant = tenant_of(stored_id)
    FRAMES_SAMPLED.labels(tenant, source).inc(frames)
    CHUNKS_COMMITTED.labels(tenant, source).inc()
    BYTES_COMMITTED.labels(tenant).inc(written)
    COMMIT_SECONDS.observe(seconds)


def asked(stored_id: str, timings_ms: dict[str, float]) -> None:
    ASKS.labels(tenant_of(stored_id)).inc()
    ASK_FIRST_TOKEN_SECONDS.observe(timings_ms.get("first_token_ms", 0.0) / 1000)
    ASK_SECONDS.observe(timings_ms.get("total_ms", 0.0) / 1000)


class Holdings:
    """One running server's holdings, read per tenant at scrape time: streams by state, live
    connections, stored bytes per tier, Asks in flight. One store read (every record) per scrape."""

    def __init__(
        self,
        store: ChunkStore,
        live_ids: Callable[[], list[str]],
        asks_in_flight: Callable[[], dict[str, int]],
    ) -> None:
        self.store = store
        self.live_ids = live_ids
        self.asks_in_flight = asks_in_flight


class _HoldingsCollector(Collector):
    """The process's one collector of holdings, over the servers running in it (one, but for tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: list[Holdings] = []

    def add(self, holdings: Holdings) -> Callable[[], None]:
        with self._lock:
            self._sources.append(holdings)

        def remove() -> None:
            with self._lock:
                if holdings in self._sources:
                    self._sources.remove(holdings)

        return remove

    def collect(self) -> Iterator[Metric]:
        streams = GaugeMetricFamily("longwatch_streams", "Streams held, by state", labels=["tenant", "state"])
        stored = GaugeMetricFamily(
            "longwatch_stored_bytes", "Bytes of chunks and vectors stored, by tier", labels=["tenant", "tier"]
        )
        live = GaugeMetricFamily(
            "longwatch_live_streams", "Live connections feeding streams", labels=["tenant"]
        )
        asking = GaugeMetricFamily("longwatch_asks_in_flight", "Asks being answered", labels=["tenant"])
        up = GaugeMetricFamily("longwatch_store_up", "1 when the store (Redis) answered this scrape")
        by_state: Tally[tuple[str, str]] = Tally()
        by_tier: Tally[tuple[str, str]] = Tally()
        live_by: Tally[str] = Tally()
        asks_by: Tally[str] = Tally()
        answered = True
        with self._lock:
            sources = list(self._sources)
        for source in sources:
            try:
                records = source.store.list_streams()
            except StoreError:  # the event counters still go out; the holdings are unknown for now
                records, answered = [], False
            for record in records:
                tenant = tenant_of(record.stream_id)
                by_state[(tenant, str(record.state))] += 1
                by_tier[(tenant, "redis")] += record.bytes_stored - record.bytes_cold
                by_tier[(tenant, "disk")] += record.bytes_cold
            live_by.update(tenant_of(s) for s in source.live_ids())
            asks_by.update(source.asks_in_flight())
        if sources:
            up.add_metric([], 1 if answered else 0)
        for (tenant, state), n in sorted(by_state.items()):
            streams.add_metric([tenant, state], n)
        for (tenant, tier), n in sorted(by_tier.items()):
            stored.add_metric([tenant, tier], n)
        for tenant, n in sorted(live_by.items()):
            live.add_metric([tenant], n)
        for tenant, n in sorted(asks_by.items()):
            asking.add_metric([tenant], n)
        yield from (up, streams, stored, live, asking)


_HOLDINGS = _HoldingsCollector()
REGISTRY.register(_HOLDINGS)


def register_holdings(holdings: Holdings) -> Callable[[], None]:
    """Count a running server's holdings in /metrics; returns what stops it (at the server's stop)."""
    return _HOLDINGS.add(holdings)

"""Standing questions in Redis: each watch, how far it has checked each stream, and its events.

A watch's keys share the hash tag `{w:<watch id>}` (stream ids hold no colon, so no stream's tag
is ever a watch's); the set `lw:watches` names them all.

    lw:{w:ID}:watch    hash: the watch (stream, tenant, question, match, webhook, counters)
    lw:{w:ID}:cursor   hash: stream id -> "<its created_unix>:<the next chunk index to check>"
                       (a stream deleted and made again under its id starts again from 0), and
                       "p:<stream id>" -> the chunk a pending (uncommitted) event was told for
    lw:{w:ID}:events   Redis stream: one entry per event, its id the event id
    lw:{w:ID}:checker  the replica checking its chunks now (SET NX PX; another takes over when
                       it lapses)
    lw:{w:ID}:webhook  the replica delivering its webhook now (likewise)

A check is recorded in one transaction that moves the stream's cursor past the chunk and adds
the event, if any, only if the cursor still stood at that chunk: two replicas checking the same
chunk record it once, and a restart never checks a recorded chunk again. An event told from a
live stream's frames before their chunk was committed (pending) marks that chunk, and the
chunk's own check then adds no second event.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis
from redis.client import Pipeline
from redis.cluster import RedisCluster

from longwatch.memory.store import redis_errors_as_store_errors, run_transaction

WATCHES_KEY = "lw:watches"
MAX_EVENTS_KEPT = 10_000  # per watch; the oldest are trimmed past this
EVENT_ID_RE = re.compile(r"\d{1,20}-\d{1,20}")
DUTIES = ("checker", "webhook")
PENDING_PREFIX = "p:"  # stream ids hold no colon: no stream's cursor field starts so


@dataclass(frozen=True)
class WatchRecord:
    """watch_id and stream_id are stored ids (tenant~id); stream_id "" watches every stream of the
    tenant's. chunks_checked, events and last_event_id are kept by the store."""

    watch_id: str
    tenant: str
    question: str
    stream_id: str = ""
    match: str = "yes"
    webhook_url: str = ""
    created_unix: float = 0.0
    chunks_checked: int = 0
    events: int = 0
    last_event_id: str = ""
    webhook_delivered_id: str = ""


@dataclass(frozen=True)
class WatchEventRecord:
    """One chunk whose answer matched. stream_id is stored (tenant~id)."""

    stream_id: str
    chunk_index: int
    start_s: float
    end_s: float
    answer: str
    score: float
    checked_unix: float
    pending: bool = False  # told from frames not yet committed (the chunk's start, so far)
    event_id: str = ""  # given by Redis when added


_STORED_FIELDS = ("tenant", "question", "stream_id", "match", "webhook_url", "created_unix")
_COUNTERS = ("chunks_checked", "events")


@dataclass(frozen=True)
class WatchKeys:
    watch_id: str

    @property
    def prefix(self) -> str:
        return f"lw:{{w:{self.watch_id}}}"

    @property
    def watch(self) -> str:
        return f"{self.prefix}:watch"

    @property
    def cursor(self) -> str:
        return f"{self.prefix}:cursor"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    def claim(self, duty: str) -> str:
        """The key of a duty one replica at a time does for the watch: "checker" or "webhook"."""
        if duty not in DUTIES:
            raise ValueError(f"duty must be one of {DUTIES}, got {duty!r}")
        return f"{self.prefix}:{duty}"


def valid_event_id(event_id: str) -> bool:
    """An id Redis gave an event ("1733390000000-0"), or "" for none."""
    return event_id == "" or EVENT_ID_RE.fullmatch(event_id) is not None


class RedisWatchStore:
    """Watches on the same Redis (or cluster) as the streams. The client must use
    decode_responses=False, as the chunk store's does (it is the same client)."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self._r = client

    @redis_errors_as_store_errors
    def create(self, watch: WatchRecord, cursors: Mapping[str, tuple[float, int]]) -> None:
        """Store a new watch, checking each stream in `cursors` (stream id -> (its created_unix,
        chunk index)) from that chunk on."""
        keys = WatchKeys(watch.watch_id)
        fields = {name: str(getattr(watch, name)) for name in _STORED_FIELDS}
        pipe = self._r.pipeline(transaction=True)  # one slot: the watch's
        pipe.hset(keys.watch, mapping={**fields, "chunks_checked": 0, "events": 0})
        if cursors:
            pipe.hset(keys.cursor, mapping={sid: _cursor(*at) for sid, at in cursors.items()})
        pipe.execute()
        self._r.sadd(WATCHES_KEY, watch.watch_id)  # after: a listed watch is always whole

    @redis_errors_as_store_errors
    def get(self, watch_id: str) -> WatchRecord | None:
        found = self._read([watch_id])
        return found[0] if found else None

    @redis_errors_as_store_errors
    def list(self) -> list[WatchRecord]:
        ids = sorted(m.decode("utf-8", "replace") for m in self._r.smembers(WATCHES_KEY))
        return self._read(ids)

    def _read(self, ids: Sequence[str]) -> list[WatchRecord]:
        pipe = self._r.pipeline(transaction=False)  # the watches are in different slots
        for wid in ids:
            keys = WatchKeys(wid)
            pipe.hgetall(keys.watch)
            pipe.xrevrange(keys.events, count=1)
        replies = pipe.execute()
        records = []
        for wid, data, newest in zip(ids, replies[0::2], replies[1::2], strict=True):
            if not data:
                continue  # deleted while listed
            text = {k.decode(): v.decode("utf-8", "replace") for k, v in data.items()}
            records.append(
                WatchRecord(
                    watch_id=wid,
                    tenant=text.get("tenant", ""),
                    question=text.get("question", ""),
                    stream_id=text.get("stream_id", ""),
                    match=text.get("match", "yes"),
                    webhook_url=text.get("webhook_url", ""),
                    created_unix=float(text.get("created_unix", 0) or 0),
                    chunks_checked=int(text.get("chunks_checked", 0) or 0),
                    events=int(text.get("events", 0) or 0),
                    last_event_id=newest[0][0].decode() if newest else "",
                    webhook_delivered_id=text.get("webhook_delivered_id", ""),
                )
            )
        return records

    @redis_errors_as_store_errors
    def delete(self, watch_id: str) -> bool:
        keys = WatchKeys(watch_id)
        removed = self._r.delete(keys.watch, keys.cursor, keys.events, *(keys.claim(d) for d in DUTIES))
        self._r.srem(WATCHES_KEY, watch_id)
        return bool(removed)

    @redis_errors_as_store_errors
    def cursors(self, watch_id: str) -> dict[str, tuple[float, int]]:
        """stream id -> (the stream's created_unix, the next chunk index to check)."""
        raw = self._r.hgetall(WatchKeys(watch_id).cursor)
        return {
            k.decode(): _parse_cursor(v) for k, v in raw.items() if not k.startswith(PENDING_PREFIX.encode())
        }

    @redis_errors_as_store_errors
    def record_check(
        self,
        watch_id: str,
        stream_id: str,
        created_unix: float,
        chunk_index: int,
        start_at: int,
        event: WatchEventRecord | None,
    ) -> str | None:
        """Record that the stream's chunk was checked (with its event, if it matched): only if the
        watch's cursor on the stream (made at `created_unix`) still stands at `chunk_index`
        (`start_at` when it has none for this stream) and the watch still exists. Returns the
        event's id, "" for a check with no event, None when nothing was recorded (another replica
        did it, or the watch is gone)."""
        keys = WatchKeys(watch_id)
        outcome: list[str | None] = [None]

        def body(pipe: Pipeline) -> None:
            outcome[0] = None
            current, told = pipe.hmget(keys.cursor, [stream_id, PENDING_PREFIX + stream_id])
            at = next_to_check(_parse_cursor(current) if current else None, created_unix, start_at)
            if at != chunk_index or not pipe.exists(keys.watch):
                pipe.multi()
                return
            pipe.multi()
            pipe.hset(keys.cursor, stream_id, _cursor(created_unix, chunk_index + 1))
            pipe.hincrby(keys.watch, "chunks_checked", 1)
            outcome[0] = ""
            if event is not None and told != _cursor(created_unix, chunk_index).encode():
                pipe.xadd(keys.events, _fields(event), maxlen=MAX_EVENTS_KEPT, approximate=True)
                pipe.hincrby(keys.watch, "events", 1)
                outcome[0] = "event"

        results = run_transaction(self._r, [keys.cursor, keys.watch], body)
        if outcome[0] is None:
            return None
        return results[2].decode() if outcome[0] == "event" else ""

    @redis_errors_as_store_errors
    def record_pending_event(
        self, watch_id: str, stream_id: str, created_unix: float, start_at: int, event: WatchEventRecord
    ) -> str | None:
        """Add an event told from a live stream's frames not yet committed (chunk `event.chunk_index`
        so far), once for that chunk, and only while the chunk's own check has not been recorded.
        Returns its id, or None when nothing was added."""
        keys = WatchKeys(watch_id)
        mark = _cursor(created_unix, event.chunk_index)
        added: list[bool] = [False]

        def body(pipe: Pipeline) -> None:
            added[0] = False
            current, told = pipe.hmget(keys.cursor, [stream_id, PENDING_PREFIX + stream_id])
            at = next_to_check(_parse_cursor(current) if current else None, created_unix, start_at)
            checked = at > event.chunk_index
            gone = not pipe.exists(keys.watch)
            pipe.multi()
            if checked or told == mark.encode() or gone:
                return
            pipe.hset(keys.cursor, PENDING_PREFIX + stream_id, mark)
            pipe.xadd(keys.events, _fields(event), maxlen=MAX_EVENTS_KEPT, approximate=True)
            pipe.hincrby(keys.watch, "events", 1)
            added[0] = True

        results = run_transaction(self._r, [keys.cursor, keys.watch], body)
        return results[1].decode() if added[0] else None

    @redis_errors_as_store_errors
    def events_after(
        self, watch_id: str, after_event_id: str, count: int = 100, block_ms: int | None = None
    ) -> list[WatchEventRecord]:
        """The watch's events after `after_event_id` ("" for all), oldest first; with block_ms,
        waits that long for one when there is none yet."""
        key = WatchKeys(watch_id).events
        reply = self._r.xread({key: after_event_id or "0-0"}, count=count, block=block_ms)
        if not reply:
            return []
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        return [_event(entry_id, fields) for entry_id, fields in entries]

    @redis_errors_as_store_errors
    def set_delivered(self, watch_id: str, event_id: str) -> None:
        keys = WatchKeys(watch_id)
        if self._r.exists(keys.watch):
            self._r.hset(keys.watch, "webhook_delivered_id", event_id)

    @redis_errors_as_store_errors
    def claim(self, watch_id: str, duty: str, holder: str, ttl_ms: int) -> bool:
        """Whether `holder` does the watch's `duty` ("checker", "webhook") for the next ttl_ms:
        taken when free or lapsed, extended when it is the holder's already."""
        key = WatchKeys(watch_id).claim(duty)
        if self._r.set(key, holder, nx=True, px=ttl_ms):
            return True
        if (self._r.get(key) or b"").decode() == holder:
            self._r.pexpire(key, ttl_ms)
            return True
        return False


def next_to_check(cursor: tuple[float, int] | None, created_unix: float, start_at: int) -> int:
    """The next chunk a watch checks in a stream made at `created_unix`: its cursor's, or
    `start_at` where it has none for this very stream (none yet, or the stream was deleted and
    made again since)."""
    if cursor is None or cursor[0] != created_unix:
        return start_at
    return cursor[1]


def _fields(event: WatchEventRecord) -> dict[str, str]:
    return {
        k: str(int(v) if isinstance(v, bool) else v)
        for k, v in dataclasses.asdict(event).items()
        if k != "event_id"
    }


def _cursor(created_unix: float, index: int) -> str:
    return f"{created_unix!r}:{index}"


def _parse_cursor(raw: bytes) -> tuple[float, int]:
    made, _, index = raw.decode().rpartition(":")
    return float(made or 0), int(index)


def _event(entry_id: bytes, fields: Mapping[bytes, bytes]) -> WatchEventRecord:
    text = {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
    return WatchEventRecord(
        stream_id=text["stream_id"],
        chunk_index=int(text["chunk_index"]),
        start_s=float(text["start_s"]),
        end_s=float(text["end_s"]),
        answer=text["answer"],
        score=float(text["score"]),
        checked_unix=float(text["checked_unix"]),
        pending=text.get("pending", "0") == "1",
        event_id=entry_id.decode(),
    )

"""Standing questions: ask each watch's question of every chunk committed to its streams.

Every replica runs a WatchChecker; each watch is checked by one replica at a time (a claim in
Redis, renewed each round, taken over when it lapses). Each round (every WATCH_INTERVAL_S) it
reads the watches and the streams, and for each watch it holds and each of its streams asks the
question of the chunks past the watch's cursor, one chunk at a time, from that chunk alone, as
an Ask retrieving just it would. An answer that starts with the watch's `match` ("yes" by
default) is an event; from a model whose yes/no answers end in the verdict ("a red circle, yes":
LoadedModel.verdict_last), one that ends with it. The check is recorded in Redis in one
transaction that moves the cursor (memory/watches.py): checks survive restarts, and even two
replicas that checked the same chunk (one whose claim lapsed mid-round) record it once. Nothing
depends on which replica ingested the chunk or on anyone being connected. The live streams fed
through this replica are also checked before their chunk is full (`_check_pending`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import torch

from longwatch.memory.chunk import ChunkCache
from longwatch.memory.records import ChunkNotFound, CorruptData, StoreError
from longwatch.memory.store import ChunkStore
from longwatch.memory.watches import RedisWatchStore, WatchEventRecord, WatchRecord, next_to_check
from longwatch.model.answer import AnswerStream, question_vector
from longwatch.proto.streams import StreamRecord, split_stored_id, stored_stream_id
from longwatch.stream.answering import validate_question
from longwatch.stream.auth import Caller, Role
from longwatch.stream.errors import BadRequest, QuotaExceeded, StreamMissing, one_line
from longwatch.stream.model_lock import LIVE
from longwatch.stream.pipeline import ModelRunner

log = logging.getLogger(__name__)

MATCH_TOKENS = 8  # an answer's first words tell yes from no; a described one ends within 8 too
MAX_WATCHES_PER_TENANT = 100
MAX_MATCH_CHARS = 64
CHECKER_CLAIM_MS = 5000  # a replica that stops checking a watch hands it on after this
CHECKS_PER_ROUND = 64  # per round, so one busy archive does not hold up every other watch
WATCH_INTERVAL_S = 0.5  # how often new chunks are looked for (commits made on any replica)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def answer_matches(answer: str, match: str, verdict_last: bool = False) -> bool:
    """Whether the answer starts with the match's words, case and punctuation aside:
    "Yes." and "yes, a red circle" match "yes"; "no" and "yesterday" do not. verdict_last: whether
    it ends with them instead ("a red circle, yes" matches "yes"; "yes, a red circle" does not)."""
    expected, said = words(match), words(answer)
    if verdict_last:
        return bool(expected) and said[max(0, len(said) - len(expected)) :] == expected
    return bool(expected) and said[: len(expected)] == expected


def cannot_match(partial: str, match: str, verdict_last: bool = False) -> bool:
    """Whether an answer that begins `partial` can no longer start with the match's words: one of
    its finished words (all but the last, unless it ends in a space or mark) differs. An answer
    that ends in its verdict (verdict_last) can match until it ends."""
    if verdict_last:
        return False
    said = words(partial)
    if said and partial[-1].isalnum():
        said = said[:-1]  # the last word may go on
    expected = words(match)
    return any(a != b for a, b in zip(said, expected, strict=False))


def check_webhook_url(url: str) -> str:
    """An http(s) URL with a host, or "" for none; anything else is BadRequest."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"webhook_url must be an http:// or https:// URL with a host, got {url!r}")
    return url


def watch_for(
    caller: Caller,
    store: ChunkStore,
    watches: RedisWatchStore,
    stream_id: str,
    question: str,
    match: str,
    webhook_url: str,
    max_question_chars: int,
) -> WatchRecord:
    """A new watch as a caller asks for it (gRPC Watch, POST /api/watches), checking only chunks
    committed from now on: its stream by the id the caller knows ("" for all of its streams; one
    that does not exist is StreamMissing, so a typo never waits in silence), a webhook only for a
    writer."""
    if webhook_url:
        caller.require(Role.WRITER, "create a watch with a webhook")
    question = validate_question(question, max_question_chars)
    match = match.strip() or "yes"
    if len(match) > MAX_MATCH_CHARS or not words(match):
        raise BadRequest(f"match must hold a word and be at most {MAX_MATCH_CHARS} characters, got {match!r}")
    tenant = caller.tenant
    stored = caller.stored_id(stream_id) if stream_id else ""
    if stored and store.get_stream(stored) is None:
        raise StreamMissing(f"no stream {stored!r}")
    mine = [w for w in watches.list() if w.tenant == tenant]
    if len(mine) >= MAX_WATCHES_PER_TENANT:
        raise QuotaExceeded(f"tenant {tenant!r} has {len(mine)} watches, the most it may have: delete one")
    streams = [r for r in store.list_streams() if caller.owns(r.stream_id)]
    cursors = {
        r.stream_id: (r.created_unix, r.chunks) for r in streams if not stored or r.stream_id == stored
    }
    watch = WatchRecord(
        watch_id=stored_stream_id(tenant, f"w{secrets.token_hex(6)}"),
        tenant=tenant,
        question=question,
        stream_id=stored,
        match=match,
        webhook_url=check_webhook_url(webhook_url),
        created_unix=round(time.time(), 3),
    )
    watches.create(watch, cursors)
    log.info("watch %s created on %s: %r", watch.watch_id, stored or f"every stream of {tenant}", question)
    return watch


def tenant_watch(watches: RedisWatchStore, tenant: str, stored_watch_id: str) -> WatchRecord:
    """The tenant's watch by its stored id; another tenant's is as missing as none."""
    watch = watches.get(stored_watch_id)
    if watch is None or watch.tenant != tenant:
        raise StreamMissing(f"no watch {stored_watch_id!r}")
    return watch


def _start_at(watch: WatchRecord, record: StreamRecord) -> int:
    """Where a watch with no cursor on the stream begins: a stream made after the watch from its
    start, one made before it (the watch was made as it was) from its end."""
    return 0 if record.created_unix >= watch.created_unix else record.chunks


def _log_event(watch: WatchRecord, event_id: str | None, event: WatchEventRecord | None) -> None:
    if event_id and event is not None:
        log.info(
            "watch %s: event %s, %s chunk %d (%.1f-%.1f s%s): %r",
            watch.watch_id,
            event_id,
            event.stream_id,
            event.chunk_index,
            event.start_s,
            event.end_s,
            ", not yet committed" if event.pending else "",
            event.answer,
        )


class LiveFrames(Protocol):
    """What the checker needs of the live streams fed here (stream.live.LiveRegistry)."""

    def live_ids(self) -> list[str]: ...

    def pending_frames(self, stream_id: str) -> tuple[int, int] | None: ...

    def pending_chunk(self, stream_id: str) -> ChunkCache | None: ...


@dataclass(frozen=True)
class _Due:
    """One check a round owes: the watch's question of the stream's chunk `index`."""

    watch: WatchRecord
    record: StreamRecord
    index: int
    start_at: int  # where the watch's cursor on the stream starts when it has none

    @classmethod
    def each(cls, watch: WatchRecord, record: StreamRecord, first: int, start_at: int) -> Iterator[_Due]:
        """The watch's checks of the stream's chunks from `first` to its last committed one."""
        return (cls(watch, record, index, start_at) for index in range(first, record.chunks))


class WatchChecker:
    """Checks new chunks against every watch (see the module's docstring); `check_round` is one
    round, run by a PeriodicTask in the server."""

    def __init__(
        self,
        runner: ModelRunner,
        store: ChunkStore,
        watches: RedisWatchStore,
        holder: str,
        live: LiveFrames | None = None,
    ) -> None:
        self.runner = runner
        self.store = store
        self.watches = watches
        self.holder = holder  # this replica, in the watches' checker claims
        self.live = live
        self._pending_seen: dict[str, tuple[int, int]] = {}  # stream -> (chunk, frames) last checked
        self._question_vectors: dict[str, torch.Tensor] = {}  # watch id -> (retrieval_dim,)

    def tick(self) -> bool:
        """One round for the PeriodicTask; True when it left checks due (the next starts at once)."""
        return self.check_round() >= CHECKS_PER_ROUND

    def check_round(self) -> int:
        """Check up to CHECKS_PER_ROUND chunks; returns how many were checked. A failure other
        than the store's is logged and the next round goes on (PeriodicTask logs the store's)."""
        try:
            return self._check_round()
        except StoreError:
            raise
        except Exception:  # noqa: BLE001 - one bad round must not end the checking
            log.exception("watch checking failed this round")
            return 0

    def _check_round(self) -> int:
        watches = self.watches.list()
        if not watches:
            self._question_vectors.clear()
            return 0
        for gone in set(self._question_vectors) - {w.watch_id for w in watches}:
            del self._question_vectors[gone]
        streams = self.store.list_streams()
        due = self._due(watches, streams)
        # Each chunk is read once for every watch that waits for it; a watch's chunks of a stream
        # stay in order (its cursor moves one chunk at a time).
        by_stream: dict[str, list[_Due]] = {}
        for item in due:
            by_stream.setdefault(item.record.stream_id, []).append(item)
        for stream_id, items in by_stream.items():
            chunks = self._read_chunks(stream_id, sorted({item.index for item in items}))
            for item in sorted(items, key=lambda i: i.index):
                self._check(item, chunks.get(item.index))
        if self.live is not None:
            self._check_pending(watches, streams)
        return len(due)

    def _check_pending(self, watches: Sequence[WatchRecord], streams: Sequence[StreamRecord]) -> None:
        """The frames of the live streams fed here that are not yet in a chunk: compressed once a
        stream each time more have come, and asked of by every watch on that stream. A match is an
        event now (pending); the chunk's own check later adds none for it."""
        assert self.live is not None
        fingerprint = self.runner.lm.fingerprint
        records = {r.stream_id: r for r in streams}
        live = set(self.live.live_ids())
        for gone in set(self._pending_seen) - live:
            del self._pending_seen[gone]
        for stream_id in live:
            record = records.get(stream_id)
            if record is None or record.model != fingerprint:
                continue
            wanted = [w for w in watches if self._covers(w, record)]
            now = self.live.pending_frames(stream_id)
            if not wanted or now is None or now[1] == 0 or self._pending_seen.get(stream_id) == now:
                continue
            self._pending_seen[stream_id] = now
            chunk = self.live.pending_chunk(stream_id)
            if chunk is None:
                continue
            for watch in wanted:
                answer = self._answer(watch.question, chunk, watch.match)
                if not answer_matches(answer, watch.match, self.runner.lm.verdict_last):
                    continue
                event = self._event(watch, record, chunk, answer, pending=True)
                event_id = self.watches.record_pending_event(
                    watch.watch_id, stream_id, record.created_unix, _start_at(watch, record), event
                )
                _log_event(watch, event_id, event)

    def _event(
        self, watch: WatchRecord, record: StreamRecord, chunk: ChunkCache, answer: str, pending: bool
    ) -> WatchEventRecord:
        return WatchEventRecord(
            stream_id=record.stream_id,
            chunk_index=chunk.index,
            start_s=chunk.start_s,
            end_s=chunk.end_s,
            answer=answer,
            score=float(self._question_vector(watch) @ chunk.retrieval.float()),
            checked_unix=round(time.time(), 3),
            pending=pending,
        )

    def _due(self, watches: Sequence[WatchRecord], streams: Sequence[StreamRecord]) -> list[_Due]:
        """The checks this replica owes this round, at most CHECKS_PER_ROUND, for the watches it
        holds (one replica at a time checks a watch; it takes over one whose holder stopped).
        Oldest chunks first across all watches, so that watches behind together move together and
        a chunk is read once for all of them."""
        fingerprint = self.runner.lm.fingerprint
        behind: list[Iterator[_Due]] = []
        for watch in watches:
            if not self.watches.claim(watch.watch_id, "checker", self.holder, CHECKER_CLAIM_MS):
                continue
            cursors = self.watches.cursors(watch.watch_id)
            for record in streams:
                if not self._covers(watch, record) or record.model != fingerprint:
                    continue  # not watched, or another model's chunks: not this server's to read
                start_at = _start_at(watch, record)
                first = next_to_check(cursors.get(record.stream_id), record.created_unix, start_at)
                if first < record.chunks:
                    behind.append(_Due.each(watch, record, first, start_at))
        merged = heapq.merge(*behind, key=lambda d: d.index)
        return list(itertools.islice(merged, CHECKS_PER_ROUND))

    def _read_chunks(self, stream_id: str, indices: list[int]) -> dict[int, ChunkCache]:
        """The chunks that can be read: one dropped by retention since, or unreadable, is left out
        (its checks are recorded without an event) and logged."""
        try:
            return {c.index: c for c in self.store.get_chunks(stream_id, indices)}
        except (ChunkNotFound, CorruptData):
            pass
        chunks = {}
        for index in indices:
            try:
                chunks[index] = self.store.get_chunks(stream_id, [index])[0]
            except (ChunkNotFound, CorruptData) as e:
                log.info("watches skip chunk %d of %s: %s", index, stream_id, one_line(e))
        return chunks

    @staticmethod
    def _covers(watch: WatchRecord, record: StreamRecord) -> bool:
        """Whether the watch is on this stream: its one stream, or any of its tenant's."""
        if watch.stream_id:
            return record.stream_id == watch.stream_id
        return split_stored_id(record.stream_id)[0] == watch.tenant

    def _check(self, item: _Due, chunk: ChunkCache | None) -> None:
        """Ask the watch's question of the chunk and record the check (with its event, if any)."""
        watch, record = item.watch, item.record
        event = None
        if chunk is not None:
            answer = self._answer(watch.question, chunk, watch.match)
            if answer_matches(answer, watch.match, self.runner.lm.verdict_last):
                event = self._event(watch, record, chunk, answer, pending=False)
        event_id = self.watches.record_check(
            watch.watch_id, record.stream_id, record.created_unix, item.index, item.start_at, event
        )
        _log_event(watch, event_id, event)

    def _answer(self, question: str, chunk: ChunkCache, match: str) -> str:
        """The answer from this chunk alone, up to MATCH_TOKENS tokens, or only as far as it takes
        to see that it does not start with `match` (most chunks: "no" is one token; an answer that
        ends in its verdict runs to its end). The model is held step by step, as Ask holds it."""
        stream = AnswerStream(self.runner.lm, [chunk], question, MATCH_TOKENS)
        steps = iter(stream)
        try:
            while True:
                with self.runner.lock.hold(LIVE):
                    if next(steps, None) is None:
                        break
                if cannot_match(stream.text, match, self.runner.lm.verdict_last):
                    break
        finally:
            steps.close()
        return stream.text

    def _question_vector(self, watch: WatchRecord) -> torch.Tensor:
        qvec = self._question_vectors.get(watch.watch_id)
        if qvec is None:
            with self.runner.lock.hold(LIVE):
                qvec = question_vector(self.runner.lm, watch.question).float()
            self._question_vectors[watch.watch_id] = qvec
        return qvec

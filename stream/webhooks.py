"""Webhook delivery of watch events: each event POSTed as JSON, in order, retried until it is taken.

One replica delivers a watch's events at a time (a claim in Redis, renewed each round). It POSTs
the events after the last one the webhook took (`webhook_delivered_id`, kept in Redis) one by
one; a 2xx moves that mark past the event. Anything else (a refused connection, a timeout, a
non-2xx) leaves the mark and the watch waits 1 s, then 2, 4 ... up to a minute before it tries
the same event again. Delivery is at least once: a replica killed between a POST and moving the
mark sends that event again; receivers tell events apart by `event_id`.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from longwatch.memory.watches import RedisWatchStore, WatchEventRecord, WatchRecord
from longwatch.proto.streams import split_stored_id

log = logging.getLogger(__name__)

EVENTS_PER_ROUND = 50
CLAIM_TTL_MS = 15_000
MAX_BACKOFF_S = 60.0


def event_json(watch: WatchRecord, event: WatchEventRecord) -> dict[str, Any]:
    """An event as its watch's tenant knows it (ids without the tenant): what a webhook receives
    and what `longwatch watch --json` prints."""
    return {
        "watch_id": split_stored_id(watch.watch_id)[1],
        "event_id": event.event_id,
        "stream_id": split_stored_id(event.stream_id)[1],
        "chunk_index": event.chunk_index,
        "start_s": event.start_s,
        "end_s": event.end_s,
        "answer": event.answer,
        "score": event.score,
        "checked_unix": event.checked_unix,
        "pending": event.pending,
        "question": watch.question,
    }


@dataclass
class _Backoff:
    failures: int = 0
    next_try: float = 0.0


class WebhookSender:
    """`deliver_round` is one round over every watch with a webhook (a PeriodicTask runs it)."""

    def __init__(self, watches: RedisWatchStore, holder: str, timeout_s: float = 5.0) -> None:
        self.watches = watches
        self.holder = holder
        self.timeout_s = timeout_s
        self._backoff: dict[str, _Backoff] = {}

    def deliver_round(self) -> int:
        """POST what is due; returns the events delivered."""
        delivered = 0
        watches = self.watches.list()
        for gone in set(self._backoff) - {w.watch_id for w in watches}:
            del self._backoff[gone]  # deleted watches
        for watch in watches:
            if not watch.webhook_url or watch.webhook_delivered_id == watch.last_event_id:
                continue
            backoff = self._backoff.setdefault(watch.watch_id, _Backoff())
            if time.monotonic() < backoff.next_try:
                continue
            if not self.watches.claim(watch.watch_id, "webhook", self.holder, CLAIM_TTL_MS):
                continue  # another replica delivers it
            for event in self.watches.events_after(
                watch.watch_id, watch.webhook_delivered_id, EVENTS_PER_ROUND
            ):
                error = self._post(watch.webhook_url, event_json(watch, event))
                if error is not None:
                    backoff.failures += 1
                    wait = min(MAX_BACKOFF_S, 2.0 ** (backoff.failures - 1))
                    backoff.next_try = time.monotonic() + wait
                    log.warning(
                        "webhook of watch %s refused event %s (%s); trying again in %.0f s",
                        watch.watch_id,
                        event.event_id,
                        error,
                        wait,
                    )
                    break
                self.watches.set_delivered(watch.watch_id, event.event_id)
                backoff.failures = 0
                delivered += 1
        return delivered

    def _post(self, url: str, body: dict[str, Any]) -> str | None:
        """None once the receiver took it (2xx); else what went wrong, in a few words."""
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "longwatch-webhook"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                return None if 200 <= reply.status < 300 else f"HTTP {reply.status}"
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            return str(getattr(e, "reason", e))

"""Slots that every replica counts together: how many Asks a tenant has running, service-wide.

A slot is a member of a sorted set scored by when it lapses. Taking one is a transaction that
drops the lapsed members, counts the rest and adds one only under the limit; giving it back
removes it. A replica killed mid-Ask never gives its slot back: it lapses after `ttl_s`.
"""

from __future__ import annotations

import secrets
import time

import redis
from redis.client import Pipeline
from redis.cluster import RedisCluster

from longwatch.memory.store import redis_errors_as_store_errors, run_transaction


class RedisSlots:
    """Counted slots under keys of their own (one per tenant and kind: a single-key transaction,
    so a Redis Cluster serves it from one master)."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self._r = client

    @redis_errors_as_store_errors
    def take(self, key: str, limit: int, ttl_s: float) -> str | None:
        """A new slot's id, or None when `limit` slots are held already."""
        slot = secrets.token_hex(8)
        taken: list[bool] = [False]

        def body(pipe: Pipeline) -> None:
            now = time.time()
            held = pipe.zcount(key, now, "+inf")  # read under WATCH; lapsed slots do not count
            pipe.multi()
            pipe.zremrangebyscore(key, "-inf", now)
            taken[0] = held < limit
            if taken[0]:
                pipe.zadd(key, {slot: now + ttl_s})
                pipe.expire(key, int(ttl_s) + 1)

        run_transaction(self._r, [key], body)
        return slot if taken[0] else None

    @redis_errors_as_store_errors
    def give_back(self, key: str, slot: str) -> None:
        self._r.zrem(key, slot)

    @redis_errors_as_store_errors
    def held(self, key: str) -> int:
        """Slots held now (not lapsed)."""
        return int(self._r.zcount(key, time.time(), "+inf"))

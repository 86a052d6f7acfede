"""The three-tier result cache of the job plane: L1 in this process, L2 on local disk, L3 in Redis.

A lookup tries L1, then L2, then L3, and copies a hit into the tiers above it. Redis being down never fails a
job: its errors are counted and the lookup goes on as a miss (and a write is skipped). Keys are the
normalized content of a command (`model.cache_key`), so repeated work with a new job id is answered at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import Counter

log = logging.getLogger(__name__)

TIERS = ("l1", "l2", "l3")
HITS = Counter("streamquant_cache_hits_total", "Result cache hits", ["tier"])
MISSES = Counter("streamquant_cache_misses_total", "Result cache misses", ["tier"])
ERRORS = Counter("streamquant_cache_errors_total", "Result cache errors (the lookup goes on as a miss)", ["tier"])
for _tier in TIERS:  # every tier's series exists from the start: a hit rate of 0 is a number, not an absent series
    for _counter in (HITS, MISSES, ERRORS):
        _counter.labels(_tier)
REDIS_PREFIX = "streamquant:results:"


class MemoryTier:
    """L1: a dict with a time to live, bounded in entries (the oldest go first)."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._data: dict[str, tuple[float, dict[str, Any]]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        if self.clock() - hit[0] > self.ttl_s:
            del self._data[key]
            return None
        return hit[1]

    def put(self, key: str, value: dict[str, Any]) -> None:
        if len(self._data) >= self.max_entries:
            del self._data[next(iter(self._data))]
        self._data[key] = (self.clock(), value)


class DiskTier:
    """L2: one JSON file per key under a folder; an entry older than the TTL is a miss (and is removed).

    Written to a temporary name and renamed, so a reader never sees half a file."""

    def __init__(self, root: str | Path, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.ttl_s = ttl_s
        self.clock = clock

    def _path(self, key: str) -> Path:
        return self.root / (hashlib.sha256(key.encode()).hexdigest() + ".json")

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            entry = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        if entry.get("key") != key:
            return None
        if self.clock() - float(entry["at"]) > self.ttl_s:
            path.unlink(missing_ok=True)
            return None
        value: dict[str, Any] = entry["value"]
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps({"key": key, "at": self.clock(), "value": value}))
        tmp.replace(path)


class ResultCache:
    """The tiers together. `redis` is a `redis.asyncio.Redis` (or None: two tiers only)."""

    def __init__(self, l1: MemoryTier, l2: DiskTier, redis: Any | None, l3_ttl_s: int,
                 redis_timeout_s: float = 0.5) -> None:
        self.l1, self.l2, self.redis = l1, l2, redis
        self.l3_ttl_s = l3_ttl_s
        self.redis_timeout_s = redis_timeout_s
        self.counts = {tier: {"hits": 0, "misses": 0, "errors": 0} for tier in TIERS}

    def _count(self, tier: str, what: str) -> None:
        self.counts[tier][what] += 1
        {"hits": HITS, "misses": MISSES, "errors": ERRORS}[what].labels(tier).inc()

    async def get(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        """The cached result and the tier that had it, or (None, None)."""
        value = self.l1.get(key)
        if value is not None:
            self._count("l1", "hits")
            return value, "l1"
        self._count("l1", "misses")
        try:
            value = self.l2.get(key)
        except (OSError, ValueError) as err:
            self._count("l2", "errors")
            log.warning("L2 cache read failed: %s", err)
        if value is not None:
            self._count("l2", "hits")
            self.l1.put(key, value)
            return value, "l2"
        self._count("l2", "misses")
        value = await self._redis_get(key)
        if value is not None:
            self._count("l3", "hits")
            self.l1.put(key, value)
            self._put_l2(key, value)
            return value, "l3"
        return None, None

    async def put(self, key: str, value: dict[str, Any]) -> None:
        self.l1.put(key, value)
        self._put_l2(key, value)
        if self.redis is None:
            return
        try:
            await asyncio.wait_for(self.redis.set(REDIS_PREFIX + key, orjson.dumps(value), ex=self.l3_ttl_s),
                                   self.redis_timeout_s)
        except Exception as err:
            self._count("l3", "errors")
            log.warning("L3 cache write failed: %s", err)

    def _put_l2(self, key: str, value: dict[str, Any]) -> None:
        try:
            self.l2.put(key, value)
        except OSError as err:
            self._count("l2", "errors")
            log.warning("L2 cache write failed: %s", err)

    async def _redis_get(self, key: str) -> dict[str, Any] | None:
        if self.redis is None:
            return None
        try:
            raw = await asyncio.wait_for(self.redis.get(REDIS_PREFIX + key), self.redis_timeout_s)
        except Exception as err:
            self._count("l3", "errors")
            log.warning("L3 cache read failed: %s", err)
            return None
        if raw is None:
            self._count("l3", "misses")
            return None
        value: dict[str, Any] = orjson.loads(raw)
        return value

    def stats(self) -> dict[str, Any]:
        """Hits, misses and errors per tier, and the overall hit rate of lookups."""
        lookups = self.counts["l1"]["hits"] + self.counts["l1"]["misses"]
        hits = sum(self.counts[t]["hits"] for t in TIERS)
        return {"tiers": self.counts, "lookups": lookups, "hit_rate": (hits / lookups) if lookups else None}

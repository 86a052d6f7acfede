"""The L3 tier on a real Redis, and the cache when Redis is down: L1/L2 keep serving, errors are counted."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import redis.asyncio as aioredis

from processors.jobs.cache import DiskTier, MemoryTier, ResultCache


def test_l3_redis_serves_a_new_process_and_redis_down_only_counts_errors(redis_url: str, unique: str,
                                                                         tmp_path: Path) -> None:
    async def scenario() -> None:
        client = aioredis.from_url(redis_url)
        first = ResultCache(MemoryTier(60), DiskTier(tmp_path / "a", 300), client, 60)
        await first.put(f"k-{unique}", {"v": 1})
        # Another process: empty L1 and L2, same Redis.
        second = ResultCache(MemoryTier(60), DiskTier(tmp_path / "b", 300), client, 60)
        assert await second.get(f"k-{unique}") == ({"v": 1}, "l3")
        assert await second.get(f"k-{unique}") == ({"v": 1}, "l1")
        assert 0 < await client.ttl(f"streamquant:results:k-{unique}") <= 60
        await client.delete(f"streamquant:results:k-{unique}")
        await client.aclose()

        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        down = aioredis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.2, socket_timeout=0.2)
        cache = ResultCache(MemoryTier(60), DiskTier(tmp_path / "c", 300), down, 60)
        await cache.put("k", {"v": 2})            # L3 write fails: counted, not raised
        assert await cache.get("k") == ({"v": 2}, "l1")
        assert await cache.get("other") == (None, None)  # L3 read fails: a miss
        assert cache.counts["l3"]["errors"] == 2
        await down.aclose()

    asyncio.run(scenario())

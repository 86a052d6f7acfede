"""The L1 and L2 tiers and the tier order; Redis (L3), live and down, is tested against a real server in
tests/integration/test_jobs_plane.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from processors.jobs.cache import DiskTier, MemoryTier, ResultCache


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_tiers_expire_and_fill_upwards(tmp_path: Path) -> None:
    c1, c2 = Clock(), Clock()
    cache = ResultCache(MemoryTier(60, clock=c1), DiskTier(tmp_path, 300, clock=c2), None, 3600)

    async def scenario() -> None:
        assert await cache.get("k") == (None, None)
        await cache.put("k", {"v": 1})
        assert await cache.get("k") == ({"v": 1}, "l1")
        c1.t += 61  # L1 expired, L2 still fresh: served from L2 and copied back into L1
        assert await cache.get("k") == ({"v": 1}, "l2")
        assert await cache.get("k") == ({"v": 1}, "l1")
        c1.t += 61
        c2.t += 301  # both expired
        assert await cache.get("k") == (None, None)

    asyncio.run(scenario())
    stats = cache.stats()
    assert stats["tiers"]["l1"] == {"hits": 2, "misses": 3, "errors": 0}
    assert stats["tiers"]["l2"]["hits"] == 1
    assert stats["lookups"] == 5 and abs(stats["hit_rate"] - 3 / 5) < 1e-12


def test_disk_tier_survives_a_new_process_and_ignores_a_torn_key(tmp_path: Path) -> None:
    DiskTier(tmp_path, 300).put("a", {"x": [1, 2]})
    assert DiskTier(tmp_path, 300).get("a") == {"x": [1, 2]}
    assert DiskTier(tmp_path, 300).get("b") is None
    assert not list(tmp_path.glob("*.tmp"))


def test_memory_tier_is_bounded() -> None:
    tier = MemoryTier(60, max_entries=3)
    for i in range(5):
        tier.put(str(i), {"i": i})
    assert tier.get("0") is None and tier.get("1") is None and tier.get("4") == {"i": 4}

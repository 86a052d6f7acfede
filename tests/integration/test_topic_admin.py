"""Applying the catalog to the real broker: idempotent, and drift is reported, not ignored."""

from __future__ import annotations

import time

from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions

from streams.topics import CatalogOptions, TopicCatalog, ensure_topics


def test_apply_twice_then_detect_drift(admin: AdminClient, unique: str) -> None:
    catalog = TopicCatalog(CatalogOptions(prefix=f"cat-{unique}.", data_partitions=4, command_partitions=2))
    specs = catalog.specs()
    try:
        first = ensure_topics(admin, specs)
        assert sorted(first.created) == sorted(s.name for s in specs) and not first.mismatched
        meta = admin.list_topics(timeout=10).topics
        assert len(meta[catalog.name("ticks")].partitions) == 4
        assert len(meta[catalog.name("jobs.status")].partitions) == 2

        second = ensure_topics(admin, specs)
        assert second.created == [] and not second.mismatched and len(second.unchanged) == len(specs)

        # Someone changes a compacted topic to delete, and grows ticks: both are reported.
        status = catalog.name("jobs.status")
        resource = ConfigResource(ConfigResource.Type.TOPIC, status, incremental_configs=[
            ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)])
        for fut in admin.incremental_alter_configs([resource]).values():
            fut.result(timeout=30)
        for fut in admin.create_partitions([NewPartitions(catalog.name("ticks"), 6)]).values():
            fut.result(timeout=30)
        # Metadata reaches the broker's cache shortly after the controller commits it.
        deadline = time.monotonic() + 15
        third = ensure_topics(admin, specs)
        while len(third.mismatched) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
            third = ensure_topics(admin, specs)
        assert set(third.mismatched) == {status, catalog.name("ticks")}
        assert any("cleanup.policy=delete (catalog: compact)" in d for d in third.mismatched[status])
        assert any("partitions 6 (catalog: 4)" in d for d in third.mismatched[catalog.name("ticks")])
    finally:
        for fut in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
            fut.result(timeout=30)

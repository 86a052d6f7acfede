"""The topic catalog declares every topic of the design with the right cleanup and partitioning."""

from __future__ import annotations

import pytest

from streams.errors import TopicError
from streams.topics import CatalogOptions, TopicCatalog

DESIGN_TOPICS = {
    "ticks", "bars", "features", "predictions", "backtest.commands", "ml.commands", "backtest.results",
    "ml.results", "jobs.status", "models", "ml.predict.requests", "ml.predict.responses",
}


def test_every_design_topic_is_declared_with_a_prefix() -> None:
    catalog = TopicCatalog(CatalogOptions(prefix="prod."))
    names = {s.name for s in catalog.specs()}
    assert {f"prod.{t}" for t in DESIGN_TOPICS} <= names
    assert catalog.name("ticks") == "prod.ticks"
    assert catalog.logical("prod.jobs.status") == "jobs.status"
    assert catalog.logical("other.ticks") is None
    with pytest.raises(TopicError, match="unknown topic"):
        catalog.name("tick")


def test_state_topics_are_compacted_and_data_topics_are_not() -> None:
    catalog = TopicCatalog()
    for name in ("jobs.status", "models", "features.changelog", "predictions.changelog"):
        assert catalog.spec(name).config["cleanup.policy"] == "compact", name
    for name in ("ticks", "bars", "features", "ticks.dlq"):
        assert catalog.spec(name).config["cleanup.policy"] == "delete", name


def test_inputs_have_dead_letter_topics_and_changelogs_are_co_partitioned() -> None:
    catalog = TopicCatalog(CatalogOptions(data_partitions=12))
    for source in ("ticks", "features", "backtest.commands", "ml.commands", "ml.predict.requests"):
        dlq = catalog.spec(f"{source}.dlq")
        assert dlq.partitions == catalog.spec(source).partitions
    assert catalog.spec("features.changelog").partitions == catalog.spec("ticks").partitions == 12
    assert catalog.spec("backtest.commands").key == "job_id"

"""The topic catalog: every topic of StreamQuant with its partitions, cleanup policy and record type.

One place declares them; `ensure_topics` applies the catalog idempotently and reports topics that
already exist with other settings instead of silently accepting them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streams.errors import BrokerUnavailable, TopicError

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: its full name, partitions, broker-side config and the record type of its values."""

    name: str
    partitions: int
    record: str
    doc: str
    config: Mapping[str, str] = field(default_factory=dict)
    key: str = "symbol"


@dataclass(frozen=True, slots=True)
class CatalogOptions:
    prefix: str = ""
    data_partitions: int = 8
    command_partitions: int = 3
    replication_factor: int = 1
    data_retention_ms: int = 7 * DAY_MS


def _delete(retention_ms: int) -> dict[str, str]:
    return {"cleanup.policy": "delete", "retention.ms": str(retention_ms)}


_COMPACT = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": str(DAY_MS)}


class TopicCatalog:
    """The topics of DESIGN.md under a configurable prefix."""

    def __init__(self, options: CatalogOptions | None = None) -> None:
        self.options = o = options or CatalogOptions()
        data = _delete(o.data_retention_ms)
        cmd = _delete(30 * DAY_MS)
        p, cp = o.data_partitions, o.command_partitions
        specs = [
            TopicSpec("ticks", p, "Tick", "market ticks, keyed by symbol", data),
            TopicSpec("bars", p, "Bar", "closed OHLCV bars", data),
            TopicSpec("features", p, "FeatureVector", "indicator values per closed bar", data),
            TopicSpec("predictions", p, "Prediction", "model outputs per feature vector", data),
            TopicSpec("backtest.commands", cp, "BacktestCommand", "backtest and cancel commands", cmd, "job_id"),
            TopicSpec("ml.commands", cp, "TrainCommand", "training and registry commands", cmd, "job_id"),
            TopicSpec("backtest.results", cp, "BacktestResult", "backtest results", cmd, "job_id"),
            TopicSpec("ml.results", cp, "TrainResult", "training results", cmd, "job_id"),
            TopicSpec("jobs.status", cp, "JobStatus", "job state transitions (newest per job)", _COMPACT, "job_id"),
            TopicSpec("models", 1, "ModelVersion", "model registry metadata", _COMPACT, "model/version"),
            TopicSpec("ml.predict.requests", cp, "PredictRequest", "request-reply inference", cmd, "correlation_id"),
            TopicSpec("ml.predict.responses", cp, "PredictResponse", "inference replies", cmd, "correlation_id"),
            TopicSpec("ticks.late", p, "Tick", "ticks for bars that had already closed", data),
            # Changelogs are co-partitioned with the topic whose state they hold.
            TopicSpec("features.changelog", p, "changelog", "feature processor state", _COMPACT),
            TopicSpec("predictions.changelog", p, "changelog", "prediction processor state", _COMPACT),
        ]
        for source in ("ticks", "features", "backtest.commands", "ml.commands", "ml.predict.requests"):
            partitions = p if source in ("ticks", "features") else cp
            specs.append(TopicSpec(f"{source}.dlq", partitions, "dead_letter",
                                   f"messages of {source} that could not be processed", cmd))
        self._specs = {s.name: s for s in specs}

    def name(self, logical: str) -> str:
        """The full topic name of a logical topic ("ticks" -> "<prefix>ticks")."""
        if logical not in self._specs:
            raise TopicError(f"unknown topic {logical!r}; known: {', '.join(self._specs)}")
        return self.options.prefix + logical

    def spec(self, logical: str) -> TopicSpec:
        s = self._specs[logical]
        return TopicSpec(self.name(logical), s.partitions, s.record, s.doc, s.config, s.key)

    def logical(self, full_name: str) -> str | None:
        """The logical name of a full topic name, or None when it is not one of ours."""
        prefix = self.options.prefix
        if full_name.startswith(prefix) and full_name[len(prefix):] in self._specs:
            return full_name[len(prefix):]
        return None

    def specs(self) -> list[TopicSpec]:
        return [self.spec(name) for name in self._specs]


@dataclass(frozen=True, slots=True)
class TopicReport:
    """What `ensure_topics` did: created, already right, and existing with different settings."""

    created: list[str]
    unchanged: list[str]
    mismatched: dict[str, list[str]]


def ensure_topics(admin: AdminClient, specs: Iterable[TopicSpec], replication_factor: int = 1,
                  timeout_s: float = 30.0) -> TopicReport:
    """Creates missing topics; compares existing ones (partitions and the config we set)."""
    specs = list(specs)
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as err:
        raise BrokerUnavailable(f"cannot list topics: {err.args[0].str()}") from None
    created: list[str] = []
    unchanged: list[str] = []
    mismatched: dict[str, list[str]] = {}

    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, replication_factor, config=dict(s.config)) for s in missing],
            operation_timeout=timeout_s,
        )
        for name, fut in futures.items():
            try:
                fut.result(timeout=timeout_s)
                created.append(name)
            except KafkaException as err:
                kerr = err.args[0]
                if kerr.name() == "TOPIC_ALREADY_EXISTS":  # created concurrently by another process
                    unchanged.append(name)
                else:
                    raise TopicError(f"cannot create topic {name}: {kerr.str()}") from None

    present = [s for s in specs if s.name in existing]
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in present]
        configs = admin.describe_configs(resources, request_timeout=timeout_s)
        by_name = {r.name: fut for r, fut in configs.items()}
        for s in present:
            diffs: list[str] = []
            actual_partitions = len(existing[s.name].partitions)
            if actual_partitions != s.partitions:
                diffs.append(f"partitions {actual_partitions} (catalog: {s.partitions})")
            try:
                entries = by_name[s.name].result(timeout=timeout_s)
            except KafkaException as err:
                raise TopicError(f"cannot describe topic {s.name}: {err.args[0].str()}") from None
            for key, want in s.config.items():
                have = entries[key].value if key in entries else None
                if have != want:
                    diffs.append(f"{key}={have} (catalog: {want})")
            if diffs:
                mismatched[s.name] = diffs
            else:
                unchanged.append(s.name)
    return TopicReport(sorted(created), sorted(unchanged), mismatched)

"""The model registry: versions per model name on the compacted `models` topic, artifacts under the artifact
root, one `active` version per name.

Each version is one record keyed `<model>/<version>`; compaction keeps the newest record of each key, so the
topic always holds every version's latest metadata. Promoting rewrites two records: the new active version
with the alias `active`, and the one it replaces without it (which keeps `previous` pointing back, for a
rollback). Writes are idempotent (same key, same value), so a retried promote changes nothing.

Artifacts are plain arrays (never pickles) and are only used after their sha256 matches the registry's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from processors.errors import InvalidCommand
from schemas.codec import InvalidMessage, RecordCodec
from schemas.records import ModelVersion
from schemas.spec import to_dict
from streams.config import KafkaConfig
from streams.errors import KafkaClientError

ACTIVE = "active"
PREVIOUS = "previous:"  # alias prefix: "previous:3" = the version that was active before this one
CODEC = RecordCodec(ModelVersion)


def key(model: str, version: int) -> bytes:
    return f"{model}/{version}".encode()


@dataclass
class Registry:
    """Every model's versions as last written (a view of the `models` topic)."""

    versions: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    offset: int = 0  # next offset of the topic to apply

    def apply(self, record: ModelVersion) -> None:
        self.versions.setdefault(record.model, {})[record.version] = record

    def active(self, model: str) -> ModelVersion | None:
        actives = [v for v in self.versions.get(model, {}).values() if ACTIVE in v.aliases]
        return max(actives, key=lambda v: v.version) if actives else None

    def get(self, model: str, version: int | None = None) -> ModelVersion:
        """A version, or the active one; InvalidCommand when there is none."""
        if version is None:
            found = self.active(model)
            if found is None:
                raise InvalidCommand(f"model {model!r} has no active version (promote one)")
            return found
        found = self.versions.get(model, {}).get(version)
        if found is None:
            raise InvalidCommand(f"model {model!r} has no version {version}")
        return found

    def next_version(self, model: str) -> int:
        return max(self.versions.get(model, {}), default=0) + 1

    def promote(self, model: str, version: int) -> list[ModelVersion]:
        """The records that make `version` active (empty when it already is)."""
        target = self.get(model, version)
        current = self.active(model)
        if current is not None and current.version == version:
            return []
        aliases = tuple(a for a in target.aliases if a != ACTIVE and not a.startswith(PREVIOUS))
        if current is not None:
            aliases += (f"{PREVIOUS}{current.version}",)
        out = [replace(target, aliases=(ACTIVE, *aliases))]
        if current is not None:
            out.append(replace(current, aliases=tuple(a for a in current.aliases if a != ACTIVE)))
        return out

    def rollback(self, model: str) -> list[ModelVersion]:
        """The records that make the version active before the current one active again."""
        current = self.get(model)
        previous = next((int(a[len(PREVIOUS):]) for a in current.aliases if a.startswith(PREVIOUS)), None)
        if previous is None:
            raise InvalidCommand(f"model {model!r} v{current.version} has no earlier active version to go back to")
        restored = self.get(model, previous)
        back = tuple(a for a in restored.aliases if a != ACTIVE)
        return [replace(restored, aliases=(ACTIVE, *back)),
                replace(current, aliases=tuple(a for a in current.aliases if a not in (ACTIVE,)
                                               and not a.startswith(PREVIOUS)))]


class RegistryReader:
    """Follows the `models` topic: `refresh()` applies what is new (call it between batches)."""

    def __init__(self, config: KafkaConfig, topic: str) -> None:
        self.topic = topic
        self.registry = Registry()
        self._consumer = Consumer({**config.client_config(), "group.id": f"streamquant-registry-{uuid.uuid4()}",
                                   "enable.auto.commit": False, "isolation.level": "read_committed",
                                   "enable.partition.eof": False})
        self._consumer.assign([TopicPartition(topic, 0, 0)])

    def refresh(self, wait_s: float = 0.0, to_end: bool = False, timeout_s: float = 30.0) -> bool:
        """Applies new records; with `to_end`, first reads up to the current end. True if anything changed."""
        changed = False
        end = None
        if to_end:
            end = self._consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=10)[1]
        deadline = time.monotonic() + timeout_s
        while True:
            messages = self._consumer.consume(1000, wait_s if end is None else 0.2)
            for m in messages:
                if m.error() is not None or m.value() is None:
                    continue
                try:
                    record = CODEC.decode(m.value())  # type: ignore[arg-type]
                except InvalidMessage:
                    continue  # not ours to judge here; the writer validated it
                self.registry.apply(record)
                self.registry.offset = int(m.offset() or 0) + 1
                changed = True
            if end is None:
                return changed
            position = self._consumer.position([TopicPartition(self.topic, 0)])[0].offset
            if position >= end or (position < 0 and end == 0):
                return changed
            if time.monotonic() > deadline:
                raise KafkaClientError(f"reading {self.topic} to its end took over {timeout_s:.0f}s")

    def close(self) -> None:
        self._consumer.close()


def read_registry(config: KafkaConfig, topic: str) -> Registry:
    reader = RegistryReader(config, topic)
    try:
        reader.refresh(to_end=True)
        return reader.registry
    finally:
        reader.close()


def publish(config: KafkaConfig, topic: str, records: Iterable[ModelVersion]) -> None:
    """Writes registry records and waits until the broker has them all."""
    producer = Producer({**config.client_config(), "enable.idempotence": True, "acks": "all"})
    failed: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    for record in records:
        producer.produce(topic, orjson.dumps(to_dict(record)), key=key(record.model, record.version),
                         partition=0, on_delivery=delivered)
    if producer.flush(30) or failed:
        raise KafkaClientError(f"could not write to {topic}: {failed or 'timed out'}")


class ForestScorer:
    """A verified forest of a direction model: P(up) per row of features (in the version's feature order),
    on the GPU (`forest.cu`, the tables copied to the device once) when `backend` uses it, else the CPU."""

    def __init__(self, forest: Any, backend: Any = None) -> None:
        self.forest = forest
        self.backend = backend
        self._on_device: Any = None
        classes = [int(c) for c in getattr(forest, "classes", (0, 1))]
        self._up = classes.index(1) if 1 in classes else len(classes) - 1

    def predict_up(self, rows: np.ndarray) -> np.ndarray:
        from gpu_kernels import forest as forest_kernels

        def on_cpu() -> np.ndarray:
            return np.asarray(forest_kernels.predict_proba(self.forest, rows))[:, self._up]

        if self.backend is None:
            return on_cpu()
        return self.backend.run(lambda cp: self._on_gpu(cp, rows), on_cpu, rows=len(rows))

    def _on_gpu(self, cp: Any, rows: np.ndarray) -> np.ndarray:
        from gpu_kernels import forest as forest_kernels

        if self._on_device is None:
            self._on_device = self.forest.on(cp)
        proba = forest_kernels.predict_proba(self._on_device, cp.asarray(rows, dtype=np.float64))
        return cp.asnumpy(proba[:, self._up])


def verify_artifact(version: ModelVersion) -> None:
    """InvalidCommand with the reason unless the version's artifact is there and hashes to its registered sha256
    (what a predictor would refuse to serve is refused at promote time too)."""
    from gpu_kernels import forest as forest_kernels

    try:
        forest_kernels.load(version.artifact, version.sha256)
    except FileNotFoundError:
        raise InvalidCommand(f"model {version.model} v{version.version}: artifact {version.artifact} is missing") \
            from None
    except forest_kernels.ForestError as err:
        raise InvalidCommand(f"model {version.model} v{version.version}: {err}") from None


def load_scorer(version: ModelVersion, backend: Any = None) -> ForestScorer:
    """The version's forest, loaded only if its artifact's sha256 is the one registered (never a pickle);
    scored on `backend` (a `processors.feature_backend.DeviceBackend`; None: the CPU)."""
    from gpu_kernels import forest as forest_kernels

    try:
        forest = forest_kernels.load(version.artifact, version.sha256)
    except FileNotFoundError:
        raise InvalidCommand(f"model {version.model} v{version.version}: artifact {version.artifact} is missing") \
            from None
    except forest_kernels.ForestError as err:  # a hash mismatch among them: refused, with the reason
        raise InvalidCommand(f"model {version.model} v{version.version}: {err}") from None
    if not forest.is_classifier:
        raise InvalidCommand(f"model {version.model} v{version.version} is a regressor (a forward_return label): "
                             "predictions give P(up), which needs a direction model (a classifier)")
    return ForestScorer(forest, backend)

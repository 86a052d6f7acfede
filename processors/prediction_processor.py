"""The prediction processor: feature vectors in, the active model's predictions out, exactly once.

Each micro-batch of `features` (read_committed) is scored with the model version active when the batch
starts; the predictions and the consumed offsets commit in one transaction, so a processor killed at any
point and restarted publishes every prediction once. A version promoted on `models` is loaded between
batches (its artifact's sha256 checked first), so a switch happens at a batch boundary and every prediction
names the version that made it. Until the model has an active version nothing is consumed: vectors wait in
the topic rather than being skipped. An active version that cannot be served (its artifact changed since it was
registered, say) is refused, logged with the reason and counted, and the version being served stays; a processor
that starts while such a version is active serves the verified version it replaced (following `previous:` back),
as one that never stopped would, and stops with the reason only when there is none.

A vector of another interval is not ours; one missing a feature the model needs (still warming up) is
skipped and counted by reason; one that cannot be decoded goes to `features.dlq`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from prometheus_client import Counter, Gauge

from processors import metrics as m
from processors.eos import EosProcessor, SourceFactory
from processors.errors import ProcessorError
from processors.registry import PREVIOUS, RegistryReader
from schemas.codec import InvalidMessage, RecordCodec
from schemas.records import FeatureVector, ModelVersion
from streams.dlq import dead_letter
from streams.source import MessageBatch
from streams.transactions import TransactionalSink

log = logging.getLogger(__name__)
NAME = "predictions"
PREDICTIONS = Counter("streamquant_predictions_total", "Predictions published", ["model", "version"])
SKIPPED = Counter("streamquant_prediction_skips_total", "Feature vectors not scored, by reason", ["reason"])
REFUSED = Counter("streamquant_model_refusals_total", "Active versions the predictor refused to load", ["model"])
ACTIVE_VERSION = Gauge("streamquant_model_active_version", "Model version the predictor uses", ["model"])
CODEC = RecordCodec(FeatureVector)

# a registry record -> its model, verified and loaded, with predict_up(X: rows × the record's features) -> P(up)
Loader = Callable[[ModelVersion], Any]


@dataclass(frozen=True, slots=True)
class PredictionTopics:
    features: str
    predictions: str
    dlq: str


@dataclass(frozen=True, slots=True)
class Thresholds:
    """signal = 1 when P(up) ≥ long, -1 when P(up) ≤ short, else 0."""

    long: float = 0.55
    short: float = 0.45

    def signal(self, p_up: float) -> int:
        return 1 if p_up >= self.long else (-1 if p_up <= self.short else 0)


def score(scorer: Any, rows: list[list[float]]) -> list[float]:
    """P(up) of each row, clipped to [0, 1] (a forest's average can overshoot by an ulp)."""
    p_up = np.asarray(scorer.predict_up(np.asarray(rows, dtype=np.float64)), dtype=np.float64)
    return np.clip(p_up, 0.0, 1.0).tolist()


DEFAULT_THRESHOLDS = Thresholds()


class PredictionProcessor(EosProcessor):
    NAME = NAME

    def __init__(self, model: str, interval: str, topics: PredictionTopics, source_factory: SourceFactory,
                 sink_factory: Callable[[], TransactionalSink], registry: RegistryReader, loader: Loader,
                 thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
        self.model = model
        self.interval = interval
        self.topics = topics
        self.registry = registry
        self.loader = loader
        self.thresholds = thresholds
        self.version: ModelVersion | None = None
        self.scorer: Any = None
        self._refused: tuple[int, str] | None = None  # the active version that failed to load (not retried)
        super().__init__(source_factory, sink_factory)

    # ------------------------------------------------------------------ model

    def _ready(self) -> bool:
        """Loads a newly active version between batches; False (consume nothing) while there is none."""
        self.registry.refresh()
        active = self.registry.registry.active(self.model)
        if active is None:
            return self.version is not None
        if self.version is not None and (active.version, active.sha256) == (self.version.version, self.version.sha256):
            self._refused = None  # a later promotion of the refused version (its artifact mended) is tried again
            return True
        if self._refused == (active.version, active.sha256):
            return self.version is not None
        try:
            scorer = self._load(active)
        except ProcessorError as err:
            self._refused = (active.version, active.sha256)
            if self.version is not None:
                log.error("%s; still serving v%d", err, self.version.version)
                return True
            # Just started (or restarted) while a refused version is active: serve the verified version it
            # replaced, as a predictor that never stopped would still be doing, rather than exit and crash-loop.
            fallback = self._fallback(active)
            if fallback is None:
                raise
            scorer, served = fallback
            log.error("%s; serving v%d, the version active before it", err, served.version)
            active = served
        self.scorer, self.version = scorer, active
        ACTIVE_VERSION.labels(self.model).set(active.version)
        log.info("model %s: now serving v%d", self.model, active.version)
        return True

    def _load(self, version: ModelVersion) -> Any:
        """The version's scorer; ProcessorError (counted) with the reason when it cannot be served."""
        try:
            if version.label.kind != "direction":
                raise ProcessorError(f"model {self.model} v{version.version} predicts {version.label.kind}; "
                                     "the prediction processor serves direction classifiers")
            return self.loader(version)  # verifies the artifact's sha256: never serve an unverified model
        except Exception as err:
            REFUSED.labels(self.model).inc()
            raise ProcessorError(f"model {self.model} v{version.version} refused: {err}") from None

    def _fallback(self, refused: ModelVersion) -> tuple[Any, ModelVersion] | None:
        """The newest earlier active version (following `previous:` back from `refused`) that loads."""
        versions = self.registry.registry.versions.get(self.model, {})
        seen = {refused.version}
        current = refused
        while True:
            back = next((int(a[len(PREVIOUS):]) for a in current.aliases if a.startswith(PREVIOUS)), None)
            if back is None or back in seen or back not in versions:
                return None
            seen.add(back)
            current = versions[back]
            try:
                return self._load(current), current
            except ProcessorError as err:
                log.error("%s", err)

    # ------------------------------------------------------------------ one batch

    def _process(self, batch: MessageBatch) -> None:
        assert self.version is not None
        t = self.topics
        names = list(self.version.features)
        self.sink.begin()
        keys: list[bytes] = []
        rows: list[list[float]] = []
        heads: list[tuple[str, int]] = []
        skipped: dict[str, int] = {}
        for i, value in enumerate(batch.values):
            try:
                vector = CODEC.decode(value)  # type: ignore[arg-type]  # None (a tombstone) is rejected there
            except InvalidMessage as err:
                letter = dead_letter(batch, i, error_class=err.error_class, reason=err.reason, processor=NAME,
                                     dlq_topic=t.dlq)
                self.sink.write_dead_letters([letter])
                skipped["undecodable"] = skipped.get("undecodable", 0) + 1
                continue
            if vector.interval != self.interval:
                skipped["other_interval"] = skipped.get("other_interval", 0) + 1
                continue
            values = [vector.values.get(n) for n in names]
            if any(v is None or not math.isfinite(v) for v in values):
                skipped["missing_feature"] = skipped.get("missing_feature", 0) + 1
                continue
            rows.append(values)  # type: ignore[arg-type]
            heads.append((vector.symbol, vector.ts))
            keys.append(vector.symbol.encode())
        for reason, n in skipped.items():
            self.after_commit(SKIPPED.labels(reason), n)
        if not rows:
            return
        v = self.version
        for (symbol, ts), key, p in zip(heads, keys, score(self.scorer, rows), strict=True):
            self.sink.write(t.predictions, key, orjson.dumps({
                "symbol": symbol, "interval": self.interval, "ts": ts, "model": v.model, "version": v.version,
                "probability": p, "signal": self.thresholds.signal(p)}))
        self.after_commit(PREDICTIONS.labels(v.model, str(v.version)), len(rows))

    def _committed(self, batch: MessageBatch, pending: Any) -> None:
        newest = int(batch.timestamps.max())
        if newest > 0:
            m.PUBLISH_LATENCY.labels(NAME).observe(max(time.time() - newest / 1000.0, 0.0))

"""Request-reply Predict: `ml.predict.requests` → `ml.predict.responses`, keyed by correlation id.

A request scores explicit feature rows, or the latest feature vectors of symbols from the online store, with
a model version (the active one when omitted). Every request gets a response: the probabilities and signals,
or an error with the reason (unknown model or version, a missing feature, a symbol with no vector yet...).
A message that is not a request at all (and so has no correlation id to answer) goes to the DLQ.

Responses are at-least-once (written, flushed, then the offsets committed): a request may be answered twice
after a crash, and clients match responses by correlation id.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
from prometheus_client import Counter, Histogram

from gpu_kernels.forest import ForestError
from processors.errors import InvalidCommand
from processors.online_store import OnlineStore
from processors.prediction_processor import DEFAULT_THRESHOLDS, Thresholds, score
from processors.registry import RegistryReader
from schemas.codec import InvalidMessage, RecordCodec
from schemas.records import ModelVersion, PredictRequest
from streams.dlq import dead_letter
from streams.sink import KafkaSink
from streams.source import BatchSource

log = logging.getLogger(__name__)
NAME = "predict"
REQUESTS = Counter("streamquant_predict_requests_total", "Predict requests answered", ["outcome"])
SECONDS = Histogram("streamquant_predict_seconds", "Time to answer one Predict request",
                    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1))
CODEC = RecordCodec(PredictRequest)


class PredictService:
    def __init__(self, source: BatchSource, sink: KafkaSink, responses_topic: str, dlq_topic: str,
                 registry: RegistryReader, loader: Callable[[ModelVersion], Any], store: OnlineStore | None,
                 default_interval: str, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
        self.source = source
        self.sink = sink
        self.responses_topic = responses_topic
        self.dlq_topic = dlq_topic
        self.registry = registry
        self.loader = loader
        self.store = store
        self.default_interval = default_interval
        self.thresholds = thresholds
        self._scorers: dict[tuple[str, int, str], Any] = {}
        self.failure: BaseException | None = None  # set by the thread that runs it, when it stops on an error

    def step(self, max_wait_s: float = 0.0) -> int:
        batch = self.source.next_batch(max_wait_s=max_wait_s, eager=True)
        if not len(batch):
            return 0
        self.registry.refresh()
        for i, value in enumerate(batch.values):
            started = time.perf_counter()
            try:
                request = CODEC.decode(value)  # type: ignore[arg-type]  # None (a tombstone) is rejected there
            except InvalidMessage as err:
                cid = _correlation_id(value)
                if cid is None:
                    letter = dead_letter(batch, i, error_class=err.error_class, reason=err.reason, processor=NAME,
                                         dlq_topic=self.dlq_topic)
                    self.sink.write(letter.topic, letter.key, letter.value, letter.headers)
                    REQUESTS.labels("dead_letter").inc()
                else:
                    self._answer(cid, {"correlation_id": cid, "model": "", "error": f"bad request: {err.reason}"})
                continue
            self._answer(request.correlation_id, self.answer(request))
            SECONDS.observe(time.perf_counter() - started)
        self.sink.commit(self.source, batch.next_offsets())
        return len(batch)

    def answer(self, request: PredictRequest) -> dict[str, Any]:
        base: dict[str, Any] = {"correlation_id": request.correlation_id, "model": request.model}
        try:
            version = self.registry.registry.get(request.model, request.version)
            rows = self._rows(request, version)
            scorer = self._scorer(version)
            p_up = score(scorer, rows)
        except (InvalidCommand, ForestError) as err:  # the requester's answer, never the service's crash
            return {**base, "error": str(err)}
        return {**base, "version": version.version, "probabilities": p_up,
                "signals": [self.thresholds.signal(p) for p in p_up]}

    def _rows(self, request: PredictRequest, version: ModelVersion) -> list[list[float]]:
        if bool(request.rows) == bool(request.symbols):
            raise InvalidCommand("give either rows or symbols (exactly one of them)")
        names = version.features
        if request.rows:
            values = [dict(r) for r in request.rows]
        else:
            if self.store is None:
                raise InvalidCommand("no online store is configured: send feature rows instead of symbols")
            interval = request.interval or self.default_interval
            try:
                found = self.store.get_many(interval, list(request.symbols))
            except Exception as err:  # Redis down is the requester's answer, not our crash
                raise InvalidCommand(f"the online store is unavailable ({type(err).__name__})") from None
            missing = [s for s, v in zip(request.symbols, found, strict=True) if v is None]
            if missing:
                raise InvalidCommand(f"no {interval} feature vector yet for: {', '.join(missing[:10])}")
            values = [v[1] for v in found if v is not None]
        out = []
        for i, row in enumerate(values):
            absent = [n for n in names if not _finite(row.get(n))]
            if absent:
                raise InvalidCommand(f"row {i} lacks {', '.join(absent[:5])} (model v{version.version} needs "
                                     f"{', '.join(names)})")
            out.append([float(row[n]) for n in names])  # type: ignore[arg-type]
        return out

    def _scorer(self, version: ModelVersion) -> Any:
        key = (version.model, version.version, version.sha256)
        if key not in self._scorers:
            self._scorers[key] = self.loader(version)
        return self._scorers[key]

    def _answer(self, cid: str, response: dict[str, Any]) -> None:
        REQUESTS.labels("error" if response.get("error") else "ok").inc()
        self.sink.write(self.responses_topic, cid.encode(), orjson.dumps(response))

    def close(self) -> None:
        self.source.close()


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _correlation_id(value: bytes | None) -> str | None:
    try:
        obj = msgspec.json.decode(value or b"")
    except msgspec.DecodeError:
        return None
    cid = obj.get("correlation_id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) and 0 < len(cid) <= 128 else None

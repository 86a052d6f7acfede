"""The records the feature processor publishes for closed bars, against a field-by-field encoding of the
engine's output (the obvious per-row loop): same keys, same values, null where a value is NaN."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from processors.feature_processor import FeatureProcessor, FeatureTopics
from processors.features import ClosedBars, EngineConfig, FeatureEngine
from processors.synthetic import MarketSpec, TickGenerator

TOPICS = FeatureTopics("ticks", "bars", "features", "ticks.dlq", "ticks.late", "changelog")


class _Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []

    def write_many(self, topic: str, keys: list[bytes | None], values: list[bytes]) -> None:
        self.records += [(topic, k, v) for k, v in zip(keys, values, strict=True)]


def _publisher(sink: _Sink) -> FeatureProcessor:
    p = object.__new__(FeatureProcessor)  # only what _publish touches; no Kafka
    p.sink = sink  # type: ignore[assignment]
    p.topics = TOPICS
    p.online_store = None
    p._latest = {}
    p._deferred = []
    return p


def _value(x: Any) -> Any:
    x = x.item() if isinstance(x, np.generic) else x
    return None if isinstance(x, float) and math.isnan(x) else x


def _expected(c: ClosedBars) -> list[tuple[str, bytes, dict[str, Any]]]:
    out = []
    for i in range(len(c)):
        symbol = str(c.symbol[i])
        head = {"symbol": symbol, "interval": c.interval, "ts": int(c.start[i])}
        bar = {**head, **{f: _value(getattr(c, f)[i]) for f in ("open", "high", "low", "close", "volume", "vwap",
                                                                 "trades")}}
        vector = {**head, "values": {n: _value(c.features[n][i]) for n in c.features}}
        out += [("bars", symbol.encode(), bar), ("features", symbol.encode(), vector)]
    return out


def test_published_bars_and_vectors_carry_every_field_with_nulls_for_nan() -> None:
    engine = FeatureEngine(EngineConfig(intervals=("1s", "5s")))
    gen = TickGenerator(MarketSpec(symbols=40, seed=11, rate=3_000, start_ms=1_767_225_600_000))
    sink = _Sink()
    publisher = _publisher(sink)
    state = engine.empty_state()
    expected: list[tuple[str, bytes, dict[str, Any]]] = []
    for _ in range(60):  # 30 s of ticks: 30 one-second bars per symbol, past the 20-bar warm-up
        out, state = engine.process(state, gen.next_chunk(1_500))
        for closed in out.closed:
            publisher._publish(closed)
            expected += _expected(closed)
    got = sorted(((t, k, orjson.loads(v)) for t, k, v in sink.records), key=lambda r: (r[0], r[2]["interval"],
                                                                                          r[2]["ts"], r[1]))
    want = sorted(expected, key=lambda r: (r[0], r[2]["interval"], r[2]["ts"], r[1]))
    assert len(got) == len(want) > 1_000
    assert got == want
    # Both kinds of null occur: indicators still warming up (and the stream has enough bars for non-nulls too).
    vectors = [v for t, _k, v in got if t == "features"]
    assert any(v["values"]["sma_20"] is None for v in vectors)
    assert any(v["values"]["sma_20"] is not None for v in vectors)

"""A job's bars read from the `bars` topic by period: exactly the committed bars of the universe, interval
and period, whatever else shares the topic."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

from processors.bars_topic import read_bars
from processors.errors import InvalidCommand
from streams.config import KafkaConfig

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01


def test_read_bars_by_period(kafka: KafkaConfig, make_topic: Any) -> None:
    topic = make_topic("bars", partitions=3)
    producer = Producer({**kafka.client_config(), "partitioner": "murmur2_random"})
    rng = np.random.default_rng(3)
    want: dict[tuple[str, int], float] = {}
    for day in range(30):
        for sym in ("AAA", "BBB", "CCC"):
            if sym == "BBB" and day % 7 == 3:
                continue  # a halted day
            ts = T0 + day * DAY
            close = float(100 + rng.normal())
            bar = {"symbol": sym, "interval": "1d", "ts": ts, "open": close - 1, "high": close + 1,
                   "low": close - 2, "close": close, "volume": 10.0, "vwap": close, "trades": 5}
            producer.produce(topic, orjson.dumps(bar), key=sym.encode())
            producer.produce(topic, orjson.dumps({**bar, "interval": "1m"}), key=sym.encode())  # other interval
            if sym != "CCC" and 10 <= day < 20:
                want[(sym, ts)] = close
    producer.flush(30)
    panel = read_bars(kafka, topic, ["AAA", "BBB"], "1d", T0 + 10 * DAY, T0 + 20 * DAY)
    assert panel.symbols == ("AAA", "BBB")
    assert panel.ts.tolist() == [T0 + d * DAY for d in range(10, 20)]
    got = {(s, int(t)): float(panel.close[i, j]) for i, t in enumerate(panel.ts) for j, s in enumerate(panel.symbols)
           if np.isfinite(panel.close[i, j])}
    assert got == want
    assert np.isnan(panel.close[panel.ts.tolist().index(T0 + 10 * DAY), 1])  # BBB halted on day 10
    with pytest.raises(InvalidCommand, match="does not exist"):
        read_bars(kafka, topic + "-missing", ["AAA"], "1d", T0, T0 + DAY)

"""Bars for a job from the `bars` topic: a period's committed bars of a universe, found by timestamp.

Each partition is read from the first offset whose record timestamp (when the bar was published: never
before the bar's start, give or take clock skew, hence a day's margin) is at or after the period's start, to
its end offset at the time of the call. Bars are then filtered by symbol, interval and their own `ts`: the
record timestamp only narrows the scan, it never decides what is in the period.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from processors.backtest_data import BarPanel
from processors.errors import InvalidCommand
from streams.config import KafkaConfig


def read_bars(config: KafkaConfig, topic: str, universe: Sequence[str], interval: str, start_ms: int, end_ms: int,
              timeout_s: float = 60.0) -> BarPanel:
    """The bars with start in [start_ms, end_ms) of `universe` at `interval`, as a panel."""
    consumer = Consumer({**config.client_config(), "group.id": f"streamquant-bars-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    wanted = set(universe)
    rows: dict[str, list[float]] = {k: [] for k in ("ts", "open", "high", "low", "close", "volume")}
    symbols: list[str] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise InvalidCommand(f"data source topic {topic!r} does not exist")
        parts = sorted(meta.partitions)
        starts = consumer.offsets_for_times([TopicPartition(topic, p, max(start_ms - 86_400_000, 0)) for p in parts],
                                            timeout=10)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        assignment = [tp for tp in starts if tp.offset >= 0 and tp.offset < ends[tp.partition]]
        if not assignment:
            raise InvalidCommand(f"no bars in {topic} between the period's start and now")
        consumer.assign(assignment)
        pending = {tp.partition for tp in assignment}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise InvalidCommand(f"reading {topic} took longer than {timeout_s:.0f}s")
            for m in consumer.consume(10_000, 0.2):
                if m.error() is not None:
                    continue
                bar = orjson.loads(m.value())  # type: ignore[arg-type]
                if bar.get("interval") != interval or bar.get("symbol") not in wanted:
                    continue
                ts = int(bar["ts"])
                if start_ms <= ts < end_ms:
                    symbols.append(bar["symbol"])
                    for k in rows:
                        rows[k].append(bar[k])
            for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                if tp.offset >= ends[tp.partition]:
                    pending.discard(tp.partition)
    except KafkaException as err:
        raise InvalidCommand(f"cannot read bars from {topic}: {err.args[0].str()}") from None
    finally:
        consumer.close()
    arrays = {k: np.asarray(v, dtype=np.int64 if k == "ts" else np.float64) for k, v in rows.items()}
    return BarPanel.from_rows(np.asarray(symbols, dtype=object), arrays["ts"], arrays["open"], arrays["high"],
                              arrays["low"], arrays["close"], arrays["volume"], tuple(universe))

"""The streaming feature processor: ticks in, bars and features out, exactly once.

Per micro-batch, in one Kafka transaction: bars, feature vectors, dead letters, late ticks, changelog
records of every symbol whose state moved, and the consumed offsets. The engine's state only advances
once the transaction is committed, so an abort rewinds the input to the batch's first offsets and the
batch is processed again from the same state. State is restored from the changelog for every partition
this instance is assigned, before any of its ticks are processed.
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

from processors import metrics as m
from processors.errors import ProcessorError
from processors.feature_state import decode_state, encode_partition, encode_symbols
from processors.features import ClosedBars, FeatureEngine, PartitionState
from schemas.tick_decoder import TickDecoder
from streams.dlq import dead_letter, dead_letters_for
from streams.errors import ProducerFenced, TransactionAborted
from streams.source import BatchSource, MessageBatch
from streams.transactions import TransactionalSink

log = logging.getLogger(__name__)
NAME = "features"
MAX_ABORTS_IN_A_ROW = 5


@dataclass(frozen=True, slots=True)
class FeatureTopics:
    ticks: str
    bars: str
    features: str
    dlq: str
    late: str
    changelog: str


SourceFactory = Callable[[Callable[[list[tuple[str, int]]], None], Callable[[list[tuple[str, int]]], None]],
                         BatchSource]
Restore = Callable[[list[int]], dict[int, dict[bytes, bytes | None]]]


class FeatureProcessor:
    """Runs the feature engine over a consumer group's share of the `ticks` partitions."""

    def __init__(self, engine: FeatureEngine, topics: FeatureTopics, source_factory: SourceFactory,
                 sink_factory: Callable[[], TransactionalSink], restore: Restore, namespace: str,
                 decoder: TickDecoder | None = None, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.namespace = namespace  # of this group's records in the changelog
        self.topics = topics
        self.decoder = decoder or TickDecoder()
        self.clock = clock
        self._restore = restore
        self._sink_factory = sink_factory
        self.states: dict[int, PartitionState] = {}
        self._idle_since = time.monotonic()
        self._aborts_in_a_row = 0
        # The sink first: initialising it aborts whatever a dead predecessor left open, which would
        # otherwise hold back the read_committed restore below.
        self.sink = sink_factory()
        self.source = source_factory(self._assigned, self._revoked)
        m.ACTIVE_BACKEND.labels(NAME, "cpu").set(1)

    # ------------------------------------------------------------------ loop

    def run(self, should_stop: Callable[[], bool], stop_when_idle_s: float | None = None) -> None:
        """Processes batches until told to stop, or until idle that long with partitions assigned and caught
        up (waiting for a rebalance or for a position to be known does not count as idle)."""
        self._idle_since = time.monotonic()
        while not should_stop():
            if self.step() or not self.states:
                self._idle_since = time.monotonic()
            elif stop_when_idle_s is not None and time.monotonic() - self._idle_since >= stop_when_idle_s:
                if self.source.caught_up():
                    log.info("idle for %.0fs: stopping", stop_when_idle_s)
                    return
                self._idle_since = time.monotonic()  # a position is still unknown: wait another round

    def step(self) -> int:
        """Consumes, processes and commits one micro-batch; returns its size."""
        batch = self.source.next_batch()
        if not len(batch):
            return 0
        started = time.perf_counter()
        try:
            pending = self._process(batch)
            commit_started = time.perf_counter()
            self.sink.commit(self.source, batch.next_offsets())
            m.COMMIT_SECONDS.labels(NAME).observe(time.perf_counter() - commit_started)
        except TransactionAborted as err:
            self._aborts_in_a_row += 1
            m.ABORTS.labels(NAME).inc()
            if self._aborts_in_a_row > MAX_ABORTS_IN_A_ROW:
                raise ProcessorError(f"the same batch was aborted {self._aborts_in_a_row} times in a row, last: "
                                     f"{err}; stopping rather than looping") from None
            log.warning("transaction aborted (%s): re-reading the batch", err)
            time.sleep(min(0.1 * 2 ** self._aborts_in_a_row, 5.0))
            self.source.seek(batch.first_offsets())
            return 0
        except ProducerFenced as err:
            log.warning("producer failed (%s): recreating it and restoring state", err)
            m.PRODUCER_RESETS.labels(NAME).inc()
            self._reset()
            return 0
        self.states.update(pending)
        self._aborts_in_a_row = 0
        m.TICKS_IN.inc(len(batch))
        m.BATCHES.labels(NAME).inc()
        m.BATCH_SIZE.labels(NAME).observe(len(batch))
        m.BATCH_SECONDS.labels(NAME).observe(time.perf_counter() - started)
        for (_topic, p), lag in self.source.lag().items():
            m.CONSUMER_LAG.labels(NAME, str(p)).set(lag)
        newest = int(batch.timestamps.max())
        if newest > 0:
            m.PUBLISH_LATENCY.labels(NAME).observe(max(self.clock() - newest / 1000.0, 0.0))
        return len(batch)

    def close(self) -> None:
        self.sink.close()
        self.source.close()

    # ------------------------------------------------------------------ one batch

    def _process(self, batch: MessageBatch) -> dict[int, PartitionState]:
        t = self.topics
        decoded = self.decoder.decode(batch.values)
        self.sink.begin()
        self.sink.write_dead_letters(dead_letters_for(batch, decoded.rejects, processor=NAME, dlq_topic=t.dlq))
        partitions = batch.partitions[decoded.indices]
        pending: dict[int, PartitionState] = {}
        for p in np.unique(batch.partitions).tolist():
            rows = np.flatnonzero(partitions == p)
            state = self.states.get(p)
            if state is None:  # assigned without a restore (cannot happen with our callbacks): refuse to guess
                self.sink.abort()
                raise ProcessorError(f"partition {p} of {t.ticks} has no restored state; stopping")
            out, new_state = self.engine.process(state, decoded.ticks.take(rows))
            for closed in out.closed:
                self._publish(closed)
            late_rows = decoded.indices[rows][out.late]
            for idx, reason in zip(late_rows.tolist(), out.late_reason, strict=True):
                letter = dead_letter(batch, idx, error_class="late", reason=reason, processor=NAME, dlq_topic=t.late)
                self.sink.write(letter.topic, letter.key, letter.value, letter.headers)
            m.LATE_TICKS.inc(len(late_rows))
            records = encode_symbols(self.engine, new_state, sorted(out.touched), self.namespace)
            records.append(encode_partition(self.engine, new_state, self.namespace))
            for key, value in records:
                self.sink.write(t.changelog, key, value, partition=p)
            pending[p] = new_state
        return pending

    def _publish(self, c: ClosedBars) -> None:
        t = self.topics
        names = list(c.features)
        columns = [c.features[n].tolist() for n in names]
        for i in range(len(c)):
            symbol = str(c.symbol[i])
            key = symbol.encode()
            ts = int(c.start[i])
            vwap = float(c.vwap[i])
            bar = {"symbol": symbol, "interval": c.interval, "ts": ts, "open": float(c.open[i]),
                   "high": float(c.high[i]), "low": float(c.low[i]), "close": float(c.close[i]),
                   "volume": float(c.volume[i]), "vwap": None if math.isnan(vwap) else vwap,
                   "trades": int(c.trades[i])}
            self.sink.write(t.bars, key, orjson.dumps(bar))
            values: dict[str, Any] = {n: (None if col[i] != col[i] else col[i]) for n, col in zip(names, columns,
                                                                                                   strict=True)}
            self.sink.write(t.features, key, orjson.dumps({"symbol": symbol, "interval": c.interval, "ts": ts,
                                                           "values": values}))
        m.BARS_OUT.labels(c.interval).inc(len(c))

    # ------------------------------------------------------------------ rebalance and recovery

    def _assigned(self, partitions: list[tuple[str, int]]) -> None:
        mine = sorted(p for topic, p in partitions if topic == self.topics.ticks)
        if not mine:
            return
        restored = self._restore(mine)
        for p in mine:
            self.states[p] = decode_state(self.engine, restored.get(p, {}), self.namespace)
        self._idle_since = time.monotonic()
        log.info("restored state of partitions %s", mine)

    def _revoked(self, partitions: list[tuple[str, int]]) -> None:
        # Batches are processed between consume() calls, so nothing is in flight here: drop the state.
        for topic, p in partitions:
            if topic == self.topics.ticks:
                self.states.pop(p, None)

    def _reset(self) -> None:
        self.sink.close()
        self.sink = self._sink_factory()
        assigned = [p for topic, p in self.source.assignment() if topic == self.topics.ticks]
        self.states = {}
        self._assigned([(self.topics.ticks, p) for p in assigned])
        self.source.rewind_to_committed([(self.topics.ticks, p) for p in assigned])

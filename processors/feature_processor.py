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
from processors.eos import EosProcessor, SourceFactory
from processors.errors import ProcessorError
from processors.feature_state import decode_state, encode_partition, encode_symbols, recorded_offset
from processors.features import ClosedBars, FeatureEngine, PartitionState
from processors.online_store import BackgroundWriter, OnlineStore, Vector
from schemas.tick_decoder import TickDecoder
from streams.dlq import dead_letter, dead_letters_for
from streams.source import MessageBatch
from streams.transactions import TransactionalSink

log = logging.getLogger(__name__)
NAME = "features"
# Longer than a transaction can stay open: transaction.timeout.ms plus the coordinator's abort check interval.
STABLE_OFFSETS_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class FeatureTopics:
    ticks: str
    bars: str
    features: str
    dlq: str
    late: str
    changelog: str


Restore = Callable[[list[int]], dict[int, dict[bytes, bytes | None]]]


class FeatureProcessor(EosProcessor):
    """Runs the feature engine over a consumer group's share of the `ticks` partitions."""

    NAME = NAME

    def __init__(self, engine: FeatureEngine, topics: FeatureTopics, source_factory: SourceFactory,
                 sink_factory: Callable[[], TransactionalSink], restore: Restore, namespace: str,
                 decoder: TickDecoder | None = None, clock: Callable[[], float] = time.time,
                 online_store: OnlineStore | None = None) -> None:
        self.engine = engine
        # Written from a thread of its own after each commit: the next batch does not wait on Redis.
        self.online_store = BackgroundWriter(online_store) if online_store is not None else None
        self._latest: dict[tuple[str, str], Vector] = {}  # this batch's newest vector per (symbol, interval)
        self.namespace = namespace  # of this group's records in the changelog
        self.topics = topics
        self.decoder = decoder or TickDecoder()
        self.clock = clock
        self._restore = restore
        self.states: dict[int, PartitionState] = {}
        super().__init__(source_factory, sink_factory)

    def _committed(self, batch: MessageBatch, pending: dict[int, PartitionState]) -> None:
        self.states.update(pending)
        if self.online_store is not None:
            self.online_store.put_many(self._latest)  # only now: never show what Kafka readers cannot see
        m.TICKS_IN.inc(len(batch))
        newest = int(batch.timestamps.max())
        if newest > 0:
            m.PUBLISH_LATENCY.labels(NAME).observe(max(self.clock() - newest / 1000.0, 0.0))

    # ------------------------------------------------------------------ one batch

    def _process(self, batch: MessageBatch) -> dict[int, PartitionState]:
        t = self.topics
        decoded = self.decoder.decode(batch.values)
        self._latest = {}
        self.sink.begin()
        self.sink.write_dead_letters(dead_letters_for(batch, decoded.rejects, processor=NAME, dlq_topic=t.dlq))
        partitions = batch.partitions[decoded.indices]
        pending: dict[int, PartitionState] = {}
        next_offsets = batch.next_offsets()
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
            self.after_commit(m.LATE_TICKS, len(late_rows))
            records = encode_symbols(self.engine, new_state, sorted(out.touched), self.namespace)
            records.append(encode_partition(self.engine, new_state, self.namespace, next_offsets[(t.ticks, p)]))
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
            if self.online_store is not None:
                self._latest[(symbol, c.interval)] = (ts, values)
        self.after_commit(m.BARS_OUT.labels(c.interval), len(c))

    def close(self) -> None:
        super().close()
        if self.online_store is not None:
            self.online_store.close()

    # ------------------------------------------------------------------ rebalance and recovery

    def _assigned(self, partitions: list[tuple[str, int]]) -> None:
        mine = sorted(p for topic, p in partitions if topic == self.topics.ticks)
        if not mine:
            return
        # First the offsets: a dead or frozen owner's transaction may still commit this batch's offsets and
        # state; restoring before it ends would restore the state it is about to supersede.
        committed = self.source.wait_for_stable_offsets([(self.topics.ticks, p) for p in mine],
                                                        STABLE_OFFSETS_TIMEOUT_S)
        restored = self._restore_matching(mine, committed)
        for p in mine:
            self.states[p] = decode_state(self.engine, restored.get(p, {}), self.namespace)
        self._idle_since = time.monotonic()
        log.info("restored state of partitions %s", mine)

    def _restore_matching(self, mine: list[int], committed: dict[tuple[str, int], int]
                          ) -> dict[int, dict[bytes, bytes | None]]:
        """The changelog, read until each partition's newest record was committed with the input offset the
        group has committed. Restoring less than that silently drops state: the suspected cause of the bars
        lost in one CI run after a broker kill (the restarted broker had reloaded its partitions with a
        stale high watermark; not confirmed). Waits for it; fails loudly rather than guess."""
        deadline = time.monotonic() + STABLE_OFFSETS_TIMEOUT_S
        while True:
            restored = self._restore(mine)
            behind: dict[int, tuple[int | None, int]] = {}
            for p in mine:
                want = committed.get((self.topics.ticks, p), -1)
                have = recorded_offset(restored.get(p, {}), self.namespace)
                if want < 0:
                    continue  # nothing committed yet: an empty changelog is right
                if have is None:
                    if not restored.get(p):  # offsets committed, yet no state visible
                        behind[p] = (None, want)
                    # else: records written before they carried the offset; nothing to compare
                elif have != want:
                    behind[p] = (have, want)
            if not behind:
                return restored
            if time.monotonic() > deadline:
                raise ProcessorError(f"the changelog {self.topics.changelog} does not reach the committed offsets "
                                     f"of {self.topics.ticks} (partition: (changelog, committed) {behind}) after "
                                     f"{STABLE_OFFSETS_TIMEOUT_S:.0f}s; refusing to restore older state")
            log.warning("changelog behind the committed offsets %s: reading it again", behind)
            time.sleep(1.0)

    def _revoked(self, partitions: list[tuple[str, int]]) -> None:
        # Batches are processed between consume() calls, so nothing is in flight here: drop the state.
        for topic, p in partitions:
            if topic == self.topics.ticks:
                self.states.pop(p, None)

    def _rebuild(self) -> None:
        assigned = [(topic, p) for topic, p in self.source.assignment() if topic == self.topics.ticks]
        self.states = {}
        self._assigned(assigned)

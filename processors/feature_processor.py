"""The streaming feature processor: ticks in, bars and features out, exactly once.

Per micro-batch, in one Kafka transaction: bars, feature vectors, dead letters, late ticks, state
checkpoints (below) and the consumed offsets. The engine's state only advances once the transaction is
committed, so an abort rewinds the input to the batch's first offsets and the batch is processed again
from the same state.

State reaches the changelog as checkpoints: a partition's checkpoint (the records of every symbol whose
state moved since its last one, and the partition record with the input offset the state stands at) is
written inside a batch's transaction at most every `checkpoint_interval_s` per partition, a few partitions
per batch, and while idle. A restore reads the changelog and replays the partition's ticks from the
checkpoint's offset to the committed offset through the same engine, publishing nothing (those outputs
were committed already): the engine gives the same state bit for bit however its input is cut, so the
restored state is the one the committed outputs came from. Writing every symbol touched by every batch
(interval 0) made the changelog most of a batch's records and a fifth of its time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import orjson

from gpu_kernels.bars import NO_TICK
from processors import metrics as m
from processors.eos import EosProcessor, SourceFactory
from processors.errors import ProcessorError
from processors.feature_state import (
    decode_state,
    encode_partition,
    encode_symbols,
    newest_symbol_offset,
    recorded_offset,
)
from processors.features import ClosedBars, FeatureEngine, PartitionState
from processors.online_store import BackgroundWriter, OnlineStore, Vector
from schemas.tick_decoder import TickDecoder
from schemas.ticks import DecodedTicks
from streams.dlq import dead_letter, dead_letters_for
from streams.source import MessageBatch
from streams.transactions import TransactionalSink

log = logging.getLogger(__name__)
NAME = "features"
# Longer than a transaction can stay open: transaction.timeout.ms plus the coordinator's abort check interval.
STABLE_OFFSETS_TIMEOUT_S = 120.0
# Partitions checkpointed in one batch when their interval is up (more when a partition is 3 intervals
# overdue or has no checkpoint yet): spreads the checkpoints over batches instead of piling them on one.
CHECKPOINTS_PER_BATCH = 2


@dataclass(frozen=True, slots=True)
class FeatureTopics:
    ticks: str
    bars: str
    features: str
    dlq: str
    late: str
    changelog: str


Restore = Callable[[list[int]], dict[int, dict[bytes, bytes | None]]]
Replay = Callable[[int, int, int], Iterable[list[bytes | None]]]  # (partition, from, to) -> tick values


@dataclass(frozen=True, slots=True)
class _Pending:
    """What a batch changes once its transaction is committed."""

    states: dict[int, PartitionState]
    at: dict[int, int]  # partition -> the input offset its new state stands at
    touched: dict[int, set[str]]  # partition -> symbols whose state moved
    checkpointed: list[int]  # partitions whose checkpoint is in the transaction


class FeatureProcessor(EosProcessor):
    """Runs the feature engine over a consumer group's share of the `ticks` partitions."""

    NAME = NAME

    def __init__(self, engine: FeatureEngine, topics: FeatureTopics, source_factory: SourceFactory,
                 sink_factory: Callable[[], TransactionalSink], restore: Restore, replay: Replay, namespace: str,
                 decoder: TickDecoder | None = None, clock: Callable[[], float] = time.time,
                 online_store: OnlineStore | None = None, checkpoint_interval_s: float = 1.0,
                 commit_interval_s: float = 0.0, close_gather_s: float = 0.0) -> None:
        self.engine = engine
        # Written from a thread of its own after each commit: the next batch does not wait on Redis.
        self.online_store = BackgroundWriter(online_store) if online_store is not None else None
        self._latest: dict[tuple[str, str], Vector] = {}  # this batch's newest vector per (symbol, interval)
        self.namespace = namespace  # of this group's records in the changelog
        self.topics = topics
        self.decoder = decoder or TickDecoder()
        self.clock = clock
        self._restore = restore
        self._replay = replay
        self.checkpoint_interval_s = checkpoint_interval_s  # 0: every batch checkpoints what it touched
        self.states: dict[int, PartitionState] = {}
        self._at: dict[int, int] = {}  # the input offset each partition's state stands at
        self._dirty: dict[int, set[str]] = {}  # symbols whose state moved since their last changelog record
        self._checkpointed: dict[int, float] = {}  # last checkpoint (monotonic); absent: none in the changelog
        # > 0: a batch that passes a bar boundary on some partitions waits up to this long for the partitions one
        # step short of it to pass it too (see `_complete`).
        self.close_gather_s = close_gather_s
        self._decoded: tuple[MessageBatch, DecodedTicks] | None = None  # decoded by `_complete` already
        self._first_interval = engine.config.intervals[0]
        self._shortest_ms = min(engine.interval_ms.values())
        super().__init__(source_factory, sink_factory)
        self.commit_interval_s = commit_interval_s  # batches that close no bar skip the broker (processors.eos)

    def _committed(self, batch: MessageBatch, pending: _Pending) -> None:
        self.states.update(pending.states)
        self._kept(pending)
        if self.online_store is not None:
            self.online_store.put_many(self._latest)  # only now: never show what Kafka readers cannot see
        m.TICKS_IN.inc(len(batch))
        newest = int(batch.timestamps.max())
        if newest > 0 and not self.batch_held:  # a held batch published nothing
            m.PUBLISH_LATENCY.labels(NAME).observe(max(self.clock() - newest / 1000.0, 0.0))

    # ------------------------------------------------------------------ one batch

    def _complete(self, batch: MessageBatch) -> MessageBatch:
        """Every second (every bar interval) all symbols' bars close at once, on every partition, and the ticks
        that close them reach the processor within a few ms of each other, partition by partition. A batch
        that closes bars on some partitions while others are still one boundary short would leave theirs to
        the next batch, which starts only after this one's whole closing work and transaction. So such a
        batch first takes what arrives in the next `close_gather_s` (until those partitions pass the boundary
        too): one closing transaction instead of two or three in a row. Only which batch a tick lands in
        changes; the outputs are the same however the input is cut."""
        if self.close_gather_s <= 0:
            return batch
        decoded = self.decoder.decode(batch.values)
        marks = self._marks(batch, decoded, {})
        target, behind = self._behind(marks)
        room = self.source.max_messages - len(batch)
        if not behind or room <= 0:  # (a full batch: catching up on a backlog, not waiting for a few ticks)
            self._decoded = (batch, decoded)
            return batch
        parts = [batch]
        deadline = time.monotonic() + self.close_gather_s
        self.rebalanced = set()
        outcome = "timed out"
        while (left := deadline - time.monotonic()) > 0 and room > 0:
            more = self.source.next_batch(max_messages=room, max_wait_s=left, eager=True)
            if self.rebalanced:
                # Partitions revoked or (re)assigned meanwhile: what was read of them before is not this
                # instance's to process (a new owner, or this one again from the committed offsets, reads it).
                # What this consume() returned came after the rebalance: it is for the assignment as it is now.
                parts = [*(b.without_partitions(self.rebalanced) for b in parts), more]
                outcome = "rebalanced"
                break
            if not len(more):
                break
            parts.append(more)
            room -= len(more)
            marks = self._marks(more, self.decoder.decode(more.values), marks)
            behind = {p for p in behind if self._bucket(marks[p]) < target}
            if not behind:
                outcome = "complete"
                break
        m.CLOSE_GATHERS.labels(NAME, outcome).inc()
        parts = [b for b in parts if len(b)]
        return parts[0] if len(parts) == 1 else MessageBatch.concat(parts) if parts else MessageBatch()

    def _marks(self, batch: MessageBatch, decoded: DecodedTicks, marks: dict[int, int]) -> dict[int, int]:
        """Each partition's event-time high mark after `batch` (starting from `marks`, else the state's)."""
        out = dict(marks) or {p: s.bars[self._first_interval].max_ts for p, s in self.states.items()}
        if len(decoded.indices):
            parts = batch.partitions[decoded.indices]
            ts = decoded.ticks.ts
            for p in np.unique(parts).tolist():
                if p in out:
                    out[p] = max(out[p], int(ts[parts == p].max()))
        return out

    def _bucket(self, mark: int) -> int:
        """Which bar boundary a partition's watermark has passed (of the shortest interval)."""
        return (mark - self.engine.config.lateness_ms) // self._shortest_ms

    def _behind(self, marks: dict[int, int]) -> tuple[int, set[int]]:
        """The newest boundary a partition has passed since its state, and the partitions one short of it."""
        passed = [self._bucket(mark) for p, mark in marks.items()
                  if (before := self.states[p].bars[self._first_interval].max_ts) != NO_TICK
                  and self._bucket(mark) > self._bucket(before)]
        if not passed:
            return 0, set()
        target = max(passed)
        return target, {p for p, mark in marks.items() if mark != NO_TICK and self._bucket(mark) == target - 1}

    def _process(self, batch: MessageBatch) -> _Pending:
        t = self.topics
        cached, self._decoded = self._decoded, None
        decoded = cached[1] if cached is not None and cached[0] is batch else self.decoder.decode(batch.values)
        self._latest = {}
        self.sink.begin()
        self.sink.write_dead_letters(dead_letters_for(batch, decoded.rejects, processor=NAME, dlq_topic=t.dlq))
        partitions = batch.partitions[decoded.indices]
        pending: dict[int, PartitionState] = {}
        touched: dict[int, set[str]] = {}
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
            pending[p] = new_state
            touched[p] = out.touched
        at = {p: next_offsets[(t.ticks, p)] for p in pending}
        due = self._due(set(pending), touched)
        for p in due:
            state = pending[p] if p in pending else self.states[p]
            self._write_checkpoint(p, state, self._dirty.get(p, set()) | touched.get(p, set()),
                                   at[p] if p in at else self._at[p])
        return _Pending(pending, at, touched, due)

    # ------------------------------------------------------------------ checkpoints

    def _due(self, in_batch: set[int], touched: dict[int, set[str]]) -> list[int]:
        """The partitions to checkpoint now: those with no checkpoint yet (their first batch's offsets must
        not be committed without one) and those with moved state whose interval is up, oldest first."""
        now = time.monotonic()
        moved = {p for p in self.states if self._dirty.get(p)} | {p for p, s in touched.items() if s}
        first = sorted(p for p in moved | in_batch if p not in self._checkpointed)
        interval = self.checkpoint_interval_s
        ready = sorted((self._checkpointed[p], p) for p in moved
                       if p in self._checkpointed and now - self._checkpointed[p] >= interval)
        if interval <= 0:
            return first + [p for _, p in ready]
        overdue = [p for t, p in ready if now - t >= 3 * interval]
        rest = [p for t, p in ready if now - t < 3 * interval]
        return first + overdue + rest[:max(CHECKPOINTS_PER_BATCH - len(first) - len(overdue), 0)]

    def _write_checkpoint(self, p: int, state: PartitionState, symbols: set[str], at: int) -> None:
        records = encode_symbols(self.engine, state, sorted(symbols), self.namespace, at)
        records.append(encode_partition(self.engine, state, self.namespace, at))
        for key, value in records:
            self.sink.write(self.topics.changelog, key, value, partition=p)

    def _kept(self, pending: _Pending) -> None:
        """Bookkeeping of a committed transaction: moved symbols, and what its checkpoints wrote."""
        self._at.update(pending.at)
        for p, symbols in pending.touched.items():
            self._dirty.setdefault(p, set()).update(symbols)
        now = time.monotonic()
        for p in pending.checkpointed:
            self._dirty[p] = set()
            self._checkpointed[p] = now

    def _checkpoint_alone(self, partitions: list[int]) -> None:
        """Checkpoints in a transaction of their own (no batch to ride on), committed with the partitions'
        current offsets."""
        partitions = [p for p in partitions if p in self._at]
        if not partitions:
            return

        def write() -> None:
            for p in partitions:
                self._write_checkpoint(p, self.states[p], self._dirty.get(p, set()), self._at[p])

        if self.commit_alone(write, {(self.topics.ticks, p): self._at[p] for p in partitions}):
            self._kept(_Pending({}, {}, {}, partitions))

    def _on_idle(self) -> None:
        # A quiet input: checkpoint what moved, so a restore after it has nothing to replay.
        due = self._due(set(), {})
        if due:
            self._checkpoint_alone(due)

    def _stopping(self) -> None:
        self._checkpoint_alone(sorted(p for p in self.states if self._dirty.get(p)))

    def _publish(self, c: ClosedBars) -> None:
        # Columns to Python values once (indexing NumPy arrays per row made a scalar object per field), and
        # no NaN -> None pass: orjson writes NaN (a value still warming up, a bar's missing VWAP) as null.
        t = self.topics
        interval = c.interval
        names = list(c.features)
        symbols = c.symbol.tolist()
        starts = c.start.tolist()
        bar_keys = ("open", "high", "low", "close", "volume", "vwap", "trades")
        bar_rows = zip(c.open.tolist(), c.high.tolist(), c.low.tolist(), c.close.tolist(), c.volume.tolist(),
                       c.vwap.tolist(), c.trades.tolist(), strict=True)
        value_rows = zip(*(c.features[n].tolist() for n in names), strict=True) if names else ({} for _ in starts)
        keys: list[bytes] = []
        bars: list[bytes] = []
        vectors: list[bytes] = []
        for symbol, ts, bar_row, value_row in zip(symbols, starts, bar_rows, value_rows, strict=True):
            keys.append(symbol.encode())
            bars.append(orjson.dumps({"symbol": symbol, "interval": interval, "ts": ts,
                                      **dict(zip(bar_keys, bar_row, strict=True))}))
            values = dict(zip(names, value_row, strict=True))
            vectors.append(orjson.dumps({"symbol": symbol, "interval": interval, "ts": ts, "values": values}))
            if self.online_store is not None:
                self._latest[(symbol, interval)] = (ts, values)
        self.sink.write_many(t.bars, keys, bars)
        self.sink.write_many(t.features, keys, vectors)
        self.after_commit(m.BARS_OUT.labels(interval), len(c))

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
        replayed = 0
        for p in mine:
            records = restored.get(p, {})
            state = decode_state(self.engine, records, self.namespace)
            start, end = recorded_offset(records, self.namespace), committed.get((self.topics.ticks, p), -1)
            self._dirty[p] = set()
            self._checkpointed.pop(p, None)
            self._at.pop(p, None)
            if end >= 0:
                self._at[p] = end
            if start is not None and start < end:
                state, replayed_p = self._replay_partition(p, state, start, end)
                replayed += replayed_p
            elif start is not None:
                self._checkpointed[p] = time.monotonic()  # the changelog stands where the offsets do
            self.states[p] = state
        m.REPLAYED_TICKS.inc(replayed)
        self._idle_since = time.monotonic()
        log.info("restored state of partitions %s (%d ticks replayed from their checkpoints)", mine, replayed)

    def _replay_partition(self, p: int, state: PartitionState, start: int, end: int) -> tuple[PartitionState, int]:
        """The state at the committed offset `end`: the checkpoint's (at `start`) with the ticks in between run
        through the engine. Their outputs were committed before; nothing is published again."""
        n = 0
        for values in self._replay(p, start, end):
            out, state = self.engine.process(state, self.decoder.decode(values).ticks)
            self._dirty[p].update(out.touched)
            n += len(values)
        return state, n

    def _restore_matching(self, mine: list[int], committed: dict[tuple[str, int], int]
                          ) -> dict[int, dict[bytes, bytes | None]]:
        """The changelog, read until each partition's newest record was committed with the input offset the
        group has committed. Restoring less than that silently drops state: the suspected cause of the bars
        lost in one CI run after a broker kill (the restarted broker had reloaded its partitions with a
        stale high watermark; not confirmed). Waits for it; fails loudly rather than guess.

        With checkpoints the partition record may stand before the committed offset (the restore replays
        the rest), never after it; and no symbol record may stand after the partition record (a checkpoint
        read in part)."""
        deadline = time.monotonic() + STABLE_OFFSETS_TIMEOUT_S
        while True:
            restored = self._restore(mine)
            behind: dict[int, tuple[int | None, int]] = {}
            orphaned: dict[int, int] = {}
            for p in mine:
                want = committed.get((self.topics.ticks, p), -1)
                records = restored.get(p, {})
                have = recorded_offset(records, self.namespace)
                if want < 0:
                    if have is not None:  # a checkpoint is only ever committed together with offsets
                        orphaned[p] = have
                    continue  # nothing committed yet: an empty changelog is right
                newest = newest_symbol_offset(records, self.namespace)
                if have is None or have > want or (newest is not None and newest > have):
                    behind[p] = (have, want)
            if orphaned:
                raise ProcessorError(
                    f"group {self.namespace} has no committed offsets on {self.topics.ticks} partitions "
                    f"{sorted(orphaned)} but its changelog holds their state (checkpoints at offsets {orphaned}): the "
                    "offsets expired (the broker's offsets.retention.minutes) or were deleted, and where the "
                    "published outputs end is unknown. Refusing to guess (re-reading from auto.offset.reset would "
                    "publish duplicates or leave a gap): start under a new features.group, or reset the group's "
                    "offsets to those checkpoint offsets (kafka-consumer-groups --reset-offsets), which publishes "
                    "again what came after them")
            if not behind:
                return restored
            if time.monotonic() > deadline:
                raise ProcessorError(f"the changelog {self.topics.changelog} holds no whole checkpoint at or before "
                                     f"the committed offsets of {self.topics.ticks} (partition: (checkpoint, "
                                     f"committed) {behind}) after {STABLE_OFFSETS_TIMEOUT_S:.0f}s; refusing to "
                                     "restore a state that does not match them")
            log.warning("no whole checkpoint at or before the committed offsets %s: reading the changelog again",
                        behind)
            time.sleep(1.0)

    def _revoked(self, partitions: list[tuple[str, int]]) -> None:
        # Batches are processed between consume() calls, so nothing is in flight here: drop the state.
        for topic, p in partitions:
            if topic == self.topics.ticks:
                for kept in (self.states, self._at, self._dirty, self._checkpointed):
                    kept.pop(p, None)

    def _rebuild(self) -> None:
        assigned = [(topic, p) for topic, p in self.source.assignment() if topic == self.topics.ticks]
        self.states, self._at, self._dirty, self._checkpointed = {}, {}, {}, {}
        self._assigned(assigned)

"""The exactly-once consume–process–produce loop that the streaming processors share.

Per micro-batch: begin a transaction, let the processor write its outputs, commit them together with the
batch's offsets. An abortable error aborts, rewinds to the batch's first offsets and re-reads it (bounded
retries with backoff); a fatal one (a fenced or broken producer) recreates the producer and lets the
processor rebuild its state from committed data. A subclass supplies `_process` (write the outputs of one
batch, return what to keep once it is committed) and `_committed` (keep it).

A batch that writes nothing (with the features processor: most batches, those that close no bar) need not
reach the broker: with `commit_interval_s` > 0 its empty transaction ends locally, its state is kept and its
offsets are held, to be committed with the next transaction that writes something, or on their own once
held that long. Exactly-once holds because such a batch published nothing: after a crash, a rebalance or a
new producer the input is re-read from the committed offsets and the state rebuilt, and the re-read batches
again publish nothing (the state is the same however the input is cut: split invariance); an aborted batch
is re-read from its own first offsets, where the state kept from the held batches stands.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from processors import metrics as m
from processors.errors import ProcessorError
from streams.errors import ProducerFenced, TransactionAborted
from streams.source import BatchSource, MessageBatch
from streams.transactions import TransactionalSink

log = logging.getLogger(__name__)
# A batch is given up on (the processor stops, to restart from committed offsets and state) only when it has
# aborted this many times in a row *and* for this long: a broker restart (~20 s in the fault suite) aborts
# every batch it catches, and is ridden out with growing pauses (up to 5 s) instead.
MAX_ABORTS_IN_A_ROW = 5
ABORTING_FOR_S = 60.0
Partitions = list[tuple[str, int]]
SourceFactory = Callable[[Callable[[Partitions], None], Callable[[Partitions], None]], BatchSource]


class EosProcessor:
    """The loop; subclasses name themselves (`NAME`, the metrics label) and implement the hooks."""

    NAME = "processor"

    def __init__(self, source_factory: SourceFactory, sink_factory: Callable[[], TransactionalSink]) -> None:
        self._sink_factory = sink_factory
        self._idle_since = time.monotonic()
        self._aborts_in_a_row = 0
        self._aborting_since = 0.0
        self._deferred: list[tuple[Any, float]] = []  # counts of the open transaction (see `after_commit`)
        self._lag_reported = 0.0
        self.freeze_gc = False  # a long-running process (the CLI's `run`) sets it: see step()
        self.commit_interval_s = 0.0  # > 0: batches that write nothing hold their offsets that long at most
        self._held: dict[tuple[str, int], int] = {}  # next offsets of kept batches not yet committed
        self._held_since = 0.0
        self.batch_held = False  # whether the batch just kept was held (it published nothing)
        self._frozen = False
        # The sink first: initialising it aborts whatever a dead predecessor left open, which would otherwise
        # hold back read_committed reads of what it wrote (a restore, say).
        self.sink = sink_factory()
        self.rebalanced: set[tuple[str, int]] = set()  # partitions revoked or assigned since last cleared
        self.source = source_factory(self._on_assigned, self._on_revoked)

    # ------------------------------------------------------------------ hooks

    def _ready(self) -> bool:
        """Whether batches may be consumed now (partitions restored, a model loaded...)."""
        return True

    def _complete(self, batch: MessageBatch) -> MessageBatch:
        """The batch to process: this one, or this one with what more arrives shortly (a subclass's choice)."""
        return batch

    def _process(self, batch: MessageBatch) -> Any:
        raise NotImplementedError

    def _committed(self, batch: MessageBatch, pending: Any) -> None:
        """The batch's transaction is committed: keep what `_process` returned."""

    def _assigned(self, partitions: Partitions) -> None:
        """Partitions assigned (restore their state here, before any of their messages is processed)."""

    def _revoked(self, partitions: Partitions) -> None:
        """Partitions revoked (batches run between consume() calls, so nothing is in flight)."""

    def _rebuild(self) -> None:
        """After a fatal producer error: state to rebuild from committed data before going on."""

    def _on_idle(self) -> None:
        """A consume() brought nothing (work that waits for a quiet moment goes here)."""

    def _stopping(self) -> None:
        """The loop is ending cleanly (told to stop, or idle long enough)."""

    def after_commit(self, counter: Any, amount: float) -> None:
        """Adds `amount` to a Prometheus counter once the current batch's transaction is committed, never
        for an aborted one: a re-read batch would otherwise count its late ticks and outputs twice."""
        if amount:
            self._deferred.append((counter, amount))

    def _report_lag(self) -> None:
        self._lag_reported = time.monotonic()
        for (_topic, p), lag in self.source.lag().items():
            m.CONSUMER_LAG.labels(self.NAME, str(p)).set(lag)

    def _on_assigned(self, partitions: Partitions) -> None:
        self.rebalanced.update(partitions)
        self._assigned(partitions)

    def _on_revoked(self, partitions: Partitions) -> None:
        self.rebalanced.update(partitions)
        # Held offsets of these partitions are dropped, never committed (the partitions may be lost): the new
        # owner re-reads those batches from the committed offsets, and they publish nothing again.
        for tp in partitions:
            self._held.pop(tp, None)
        # The new owner reports these partitions' lag from now on; a value left here would never change again.
        for _topic, p in partitions:
            with contextlib.suppress(KeyError):
                m.CONSUMER_LAG.remove(self.NAME, str(p))
        self._revoked(partitions)

    # ------------------------------------------------------------------ loop

    def run(self, should_stop: Callable[[], bool], stop_when_idle_s: float | None = None) -> None:
        """Processes batches until told to stop, or until idle that long with partitions assigned and caught
        up (waiting for a rebalance or for a position to be known does not count as idle)."""
        self._idle_since = time.monotonic()
        while not should_stop():
            if self.step() or not self.source.assignment():
                self._idle_since = time.monotonic()
            elif stop_when_idle_s is not None and time.monotonic() - self._idle_since >= stop_when_idle_s:
                if self.source.caught_up():
                    log.info("idle for %.0fs: stopping", stop_when_idle_s)
                    break
                self._idle_since = time.monotonic()  # a position is still unknown: wait another round
        self._stopping()
        self.commit_held()

    def step(self) -> int:
        """Consumes, processes and commits one micro-batch; returns its size."""
        if not self._ready():
            time.sleep(0.1)
            return 0
        batch = self.source.next_batch()
        if not len(batch):
            if time.monotonic() - self._lag_reported >= 1.0:  # an idle consumer's lag falls to 0 here too
                self._report_lag()
            self._on_idle()
            if self._held and time.monotonic() - self._held_since >= self.commit_interval_s:
                self.commit_held()
            return 0
        batch = self._complete(batch)
        if not len(batch):  # all of it belonged to partitions a rebalance took meanwhile
            return 0
        started = time.perf_counter()
        self._deferred = []
        try:
            pending = self._process(batch)
            offsets = batch.next_offsets()
            self.batch_held = self._holds(offsets)
            if self.batch_held:
                # Nothing written, no offsets: ends without a call into the client. No membership check
                # either: nothing reaches the broker, and if this instance was evicted the rebalance at the
                # next consume() drops the held offsets with the partitions.
                self.sink.commit(self.source, {})
                if not self._held:
                    self._held_since = time.monotonic()
                self._held.update(offsets)
            else:
                if not self.source.is_member():
                    self.sink.abort()
                    raise TransactionAborted("this instance is no longer a group member (evicted): its "
                                             "partitions belong to another now")
                commit_started = time.perf_counter()
                self.sink.commit(self.source, {**self._held, **offsets})
                m.COMMIT_SECONDS.labels(self.NAME).observe(time.perf_counter() - commit_started)
                self._held = {}
        except TransactionAborted as err:
            if self._aborts_in_a_row == 0:
                self._aborting_since = time.monotonic()
            self._aborts_in_a_row += 1
            m.ABORTS.labels(self.NAME).inc()
            aborting_s = time.monotonic() - self._aborting_since
            if self._aborts_in_a_row > MAX_ABORTS_IN_A_ROW and aborting_s >= ABORTING_FOR_S:
                raise ProcessorError(f"the same batch was aborted {self._aborts_in_a_row} times in a row over "
                                     f"{aborting_s:.0f}s, last: {err}; stopping rather than looping") from None
            log.warning("transaction aborted (%s): re-reading the batch", err)
            time.sleep(min(0.1 * 2 ** self._aborts_in_a_row, 5.0))
            self.source.seek(batch.first_offsets())
            return 0
        except ProducerFenced as err:
            self._reset(err)
            return 0
        self._aborts_in_a_row = 0
        self._committed(batch, pending)
        if self.freeze_gc and not self._frozen:
            # What the start made (modules, clients, kernels compiled or loaded at the first batch: ~10^5
            # objects) moves to the collector's permanent generation, so full collections scan only what
            # batches allocate. Measured before: full collections of up to 189 ms in a 30 s run at 10,000
            # ticks/s (up to 70 ms when frozen before the first batch), each a latency spike.
            self._frozen = True
            gc.collect()
            gc.freeze()
        deferred, self._deferred = self._deferred, []
        for counter, amount in deferred:
            counter.inc(amount)
        m.BATCHES.labels(self.NAME).inc()
        m.BATCH_SIZE.labels(self.NAME).observe(len(batch))
        m.BATCH_SECONDS.labels(self.NAME).observe(time.perf_counter() - started)
        self._report_lag()
        return len(batch)

    def _holds(self, offsets: dict[tuple[str, int], int]) -> bool:
        """Whether this batch's offsets are held instead of committed now (see the module's docstring)."""
        if self.commit_interval_s <= 0 or self.sink.wrote:
            return False
        return not self._held or time.monotonic() - self._held_since < self.commit_interval_s

    def commit_held(self) -> None:
        """Commits held offsets on their own (when they have waited long enough, and when the loop ends). If
        that fails (not a group member just now, an abort), the next try waits another interval."""
        if self._held and not self.commit_alone(lambda: None, {}):
            self._held_since = time.monotonic()

    def commit_alone(self, write: Callable[[], None], offsets: dict[tuple[str, int], int]) -> bool:
        """A transaction of its own between batches (a state checkpoint while idle, say): `write` adds the
        records, `offsets` are committed with them, and any held ones (the positions the kept state stands
        at; committing offsets also means a fenced zombie cannot commit it: KIP-447). True if it was
        committed; an abort is logged and dropped, a fatal error recreates the producer as in `step`."""
        try:
            self.sink.begin()
            write()
            if not self.source.is_member():
                self.sink.abort()
                return False
            self.sink.commit(self.source, {**self._held, **offsets})
            self._held = {}
            return True
        except TransactionAborted as err:
            m.ABORTS.labels(self.NAME).inc()
            log.warning("transaction aborted (%s): dropped", err)
        except ProducerFenced as err:
            self._reset(err)
        return False

    def close(self) -> None:
        self.sink.close()
        self.source.close()

    def _reset(self, err: ProducerFenced) -> None:
        log.warning("producer failed (%s): recreating it and rebuilding state", err)
        m.PRODUCER_RESETS.labels(self.NAME).inc()
        self.sink.close()
        self.sink = self._sink_factory()
        self._held = {}  # the rebuilt state stands at the committed offsets, and reading goes on from there
        assigned = self.source.assignment()
        self._rebuild()
        self.source.rewind_to_committed(assigned)

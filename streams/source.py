"""The batch source: consume in micro-batches bounded by count and time, with manual offsets."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.config import KafkaConfig
from streams.errors import AuthenticationFailed, KafkaClientError, NotAuthorized, is_authorization_error
from streams.metrics import MESSAGES_CONSUMED

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes | None]]


class MessageBatch:
    """The raw messages of one micro-batch. Values, partitions and offsets are read up front (every batch
    needs them); topics, keys, headers and timestamps only when asked for (dead letters, metrics)."""

    __slots__ = ("_headers", "_keys", "_messages", "_timestamps", "_topics", "offsets", "partitions", "values")

    def __init__(self, messages: Sequence[Message] = (), *, topics: list[str] | None = None,
                 partitions: np.ndarray | None = None, offsets: np.ndarray | None = None,
                 timestamps: np.ndarray | None = None, keys: list[bytes | None] | None = None,
                 values: list[bytes | None] | None = None, headers: list[Headers | None] | None = None) -> None:
        self._messages = messages
        n = len(messages)
        self.values: list[bytes | None] = values if values is not None else [m.value() for m in messages]
        self.partitions: np.ndarray = (partitions if partitions is not None
                                       else np.fromiter((m.partition() for m in messages), np.int32, n))
        self.offsets: np.ndarray = (offsets if offsets is not None
                                    else np.fromiter((m.offset() for m in messages), np.int64, n))
        self._topics, self._keys, self._headers, self._timestamps = topics, keys, headers, timestamps

    @property
    def topics(self) -> list[str]:
        if self._topics is None:
            self._topics = [cast(str, m.topic()) for m in self._messages]
        return self._topics

    @property
    def keys(self) -> list[bytes | None]:
        if self._keys is None:
            self._keys = [m.key() for m in self._messages]
        return self._keys

    @property
    def headers(self) -> list[Headers | None]:
        if self._headers is None:
            self._headers = [cast(Headers | None, m.headers()) for m in self._messages]
        return self._headers

    @property
    def timestamps(self) -> np.ndarray:
        """Message timestamps in ms (producer create time, or broker log-append time)."""
        if self._timestamps is None:
            self._timestamps = np.fromiter((m.timestamp()[1] for m in self._messages), np.int64,
                                           len(self._messages))
        return self._timestamps

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def concat(cls, batches: Sequence[MessageBatch]) -> MessageBatch:
        """One batch of several consumed one after the other (their messages in that order)."""
        partitions = np.concatenate([b.partitions for b in batches])
        offsets = np.concatenate([b.offsets for b in batches])
        values = [v for b in batches for v in b.values]
        if all(len(b._messages) == len(b) for b in batches):  # straight from the consumer: the rest stays lazy
            topics = None if any(b._topics is None for b in batches) else [t for b in batches for t in b.topics]
            return cls([m for b in batches for m in b._messages], topics=topics, partitions=partitions,
                       offsets=offsets, values=values)
        return cls(topics=[t for b in batches for t in b.topics], partitions=partitions, offsets=offsets,
                   timestamps=np.concatenate([b.timestamps for b in batches]),
                   keys=[k for b in batches for k in b.keys], values=values,
                   headers=[h for b in batches for h in b.headers])

    def without_partitions(self, partitions: set[tuple[str, int]]) -> MessageBatch:
        """This batch less the messages of the given (topic, partition)s."""
        keep = [i for i, (t, p) in enumerate(zip(self.topics, self.partitions.tolist(), strict=True))
                if (t, p) not in partitions]
        rows = np.array(keep, np.int64)
        return MessageBatch([self._messages[i] for i in keep] if len(self._messages) == len(self) else (),
                            topics=[self.topics[i] for i in keep], partitions=self.partitions[rows],
                            offsets=self.offsets[rows], timestamps=self.timestamps[rows],
                            keys=[self.keys[i] for i in keep], values=[self.values[i] for i in keep],
                            headers=[self.headers[i] for i in keep])

    def first_offsets(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition): the first offset of this batch (where to seek to read it again)."""
        return self._extreme_offsets(first=True)

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition): the offset to commit after this batch (last offset + 1)."""
        return {k: v + 1 for k, v in self._extreme_offsets(first=False).items()}

    def _extreme_offsets(self, first: bool) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        if not len(self):
            return out
        topics = self.topics
        if len(set(topics)) == 1:
            single = topics[0]
            parts = self.partitions
            for p in np.unique(parts).tolist():
                offs = self.offsets[parts == p]
                out[(single, p)] = int(offs.min() if first else offs.max())
            return out
        for topic, partition, offset in zip(topics, self.partitions.tolist(), self.offsets.tolist(), strict=True):
            key = (topic, partition)
            if key not in out or (offset < out[key] if first else offset > out[key]):
                out[key] = offset
        return out


AssignCallback = Callable[[list[tuple[str, int]]], None]


# librdkafka's fetch defaults (1 MiB per partition per fetch, 100,000 messages kept queued per partition) held one
# consumer to ~218,000 small ticks/s on the local broker, Python doing nothing but `consume`; either raised alone
# gave ~3x that (bench/RESULTS.md, "Consumer fetch settings"). Memory stays bounded by `queued.max.messages.kbytes`
# (64 MiB for the whole consumer queue by default). `kafka.options` overrides these.
FETCH_DEFAULTS: dict[str, Any] = {"max.partition.fetch.bytes": 4 << 20, "queued.min.messages": 1_000_000}


class BatchSource:
    """A consumer-group member that hands out micro-batches and commits offsets only when told."""

    def __init__(
        self,
        config: KafkaConfig,
        group_id: str,
        topics: Sequence[str],
        *,
        max_messages: int = 10_000,
        max_wait_s: float = 0.05,
        auto_offset_reset: str = "earliest",
        isolation_level: str = "read_committed",
        on_assign: AssignCallback | None = None,
        on_revoke: AssignCallback | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.max_messages = max_messages
        self.group_id = group_id
        self._reset_to = OFFSET_BEGINNING if auto_offset_reset in ("earliest", "smallest", "beginning") else OFFSET_END
        self.max_wait_s = max_wait_s
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        conf: dict[str, Any] = {
            **FETCH_DEFAULTS,
            **config.client_config(),
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": auto_offset_reset,
            "isolation.level": isolation_level,
            "partition.assignment.strategy": "cooperative-sticky",
            "error_cb": self._on_error,
            **(extra or {}),
        }
        self._fatal: KafkaError | None = None
        self._warned_at = 0.0
        self._callback_error: BaseException | None = None
        self._consumer = Consumer(conf)
        self._topics = list(topics)
        self._consumer.subscribe(list(topics), on_assign=self._assigned, on_revoke=self._revoked,
                                 on_lost=self._revoked)

    # -- the seam processors use

    def next_batch(self, max_messages: int | None = None, max_wait_s: float | None = None,
                   eager: bool = False) -> MessageBatch:
        """Up to `max_messages` messages, returning early after `max_wait_s` seconds. `eager`: return as soon as
        one message is there, with whatever else already is (for request-reply, where waiting to fill a batch
        is latency)."""
        limit = max_messages or self.max_messages
        wait = self.max_wait_s if max_wait_s is None else max_wait_s
        if eager:
            first = self._consumer.poll(wait)
            messages = [] if first is None else [first, *self._consumer.consume(limit - 1, 0)]
        else:
            messages = self._consumer.consume(limit, wait)
        if self._callback_error is not None:
            # An exception cannot cross librdkafka's callback frame intact: re-raise it here, as it was.
            raised, self._callback_error = self._callback_error, None
            raise raised
        if self._fatal is not None:
            if self._fatal.code() == KafkaError._AUTHENTICATION:
                raise AuthenticationFailed(f"the broker rejected this consumer's login ({self._fatal.str()})")
            raise KafkaClientError(f"consumer failed: {self._fatal.str()}")
        good = []
        for m in messages:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif is_authorization_error(err.name()):
                raise NotAuthorized(f"not allowed to read {m.topic()} in group {self.group_id} "
                                    f"({err.name()}): this principal needs READ ACLs on both")
            elif err.fatal():
                raise KafkaClientError(f"consumer failed: {err.str()}")
            else:
                log.warning("consume error (retried by the client): %s", err.str())
        # One subscribed topic: every message's topic is known without asking each message.
        batch = MessageBatch(good, topics=[self._topics[0]] * len(good) if len(self._topics) == 1 else None)
        if good:
            for topic in set(batch.topics):
                MESSAGES_CONSUMED.labels(topic).inc(batch.topics.count(topic))
        return batch

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commits the given next-offsets synchronously (at-least-once: after outputs are durable)."""
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as err:
            raise KafkaClientError(f"offset commit failed: {err.args[0].str()}") from None

    def committed(self, partitions: Sequence[tuple[str, int]], timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
        tps = self._consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=timeout_s)
        return {(tp.topic, tp.partition): tp.offset for tp in tps}

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        """Moves the given partitions back (or on) to these offsets: how an aborted batch is re-read."""
        for (topic, partition), offset in offsets.items():
            self._consumer.seek(TopicPartition(topic, partition, offset))

    def rewind_to_committed(self, partitions: Sequence[tuple[str, int]], timeout_s: float = 10.0) -> None:
        """Moves partitions back to their committed offsets (where nothing is committed yet: to where
        `auto_offset_reset` says). A failed lookup raises: guessing could replay or skip messages."""
        tps = self._consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=timeout_s)
        for tp in tps:
            if tp.error is not None:
                raise KafkaClientError(f"committed offset of {tp.topic}[{tp.partition}]: {tp.error.str()}")
            offset = tp.offset if tp.offset >= 0 else self._reset_to
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages between each assigned partition's position and its end (from the client's cached view)."""
        out: dict[tuple[str, int], int] = {}
        for tp in self._consumer.position(self._consumer.assignment()):
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0:
                out[(tp.topic, tp.partition)] = max(high - tp.offset, 0)
        return out

    def caught_up(self, timeout_s: float = 5.0) -> bool:
        """Whether every assigned partition's position is at its end. A partition with no message consumed
        since its assignment has no position yet: its committed offset stands in, and while that cannot be
        read (held back by a dead member's open transaction, say) the answer is no. Costs broker round trips:
        for decisions such as stopping when idle, not for every poll."""
        assigned = self._consumer.assignment()
        if not assigned:
            return False
        positions = self._consumer.position(assigned)
        unknown = [tp for tp in positions if tp.offset < 0]
        if unknown:
            try:
                known = {(tp.topic, tp.partition): tp for tp in self._consumer.committed(unknown, timeout=timeout_s)}
            except KafkaException:
                return False
            positions = [known.get((tp.topic, tp.partition), tp) if tp.offset < 0 else tp for tp in positions]
        for tp in positions:
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
            if (tp.offset if tp.offset >= 0 else low) < high:
                return False
        return True

    def wait_for_stable_offsets(self, partitions: list[tuple[str, int]], timeout_s: float
                                ) -> dict[tuple[str, int], int]:
        """Returns once no transaction holds an uncommitted offset commit for these partitions.

        A read_committed consumer's committed() waits while a transaction that sent offsets for a partition
        is still open (KIP-447's stable offsets). A new owner must wait for that before it restores state:
        a member that was frozen past its session timeout after sending its offsets can still commit that
        transaction (the coordinator aborts it only after transaction.timeout.ms, checked every
        transaction.abort.timed.out.transaction.cleanup.interval.ms), and state restored before that commit
        would miss the batch the offsets move past: its bars would be emitted twice. Returns the committed
        offsets (negative where none)."""
        if not partitions:
            return {}
        tps = [TopicPartition(t, p) for t, p in partitions]
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                got = self._consumer.committed(tps, timeout=min(5.0, max(deadline - time.monotonic(), 0.1)))
                for tp in got:  # a failed lookup must not read as "nothing committed"
                    if tp.error is not None:
                        raise KafkaClientError(f"committed offset of {tp.topic}[{tp.partition}]: {tp.error.str()}")
                return {(tp.topic, tp.partition): tp.offset for tp in got}
            except KafkaException as err:
                kerr: KafkaError = err.args[0]
                if time.monotonic() >= deadline or kerr.code() != KafkaError._TIMED_OUT:
                    raise KafkaClientError(
                        f"committed offsets of {sorted(partitions)} still unstable after {timeout_s:.0f}s "
                        f"(an open transaction holds them): {kerr.str()}") from None
                log.info("committed offsets held by an open transaction: waiting for it to end")

    def is_member(self) -> bool:
        """Whether the consumer is a group member now: one evicted (frozen past its session timeout, say)
        has no member id until it rejoins, and must not commit a transaction for partitions it lost."""
        return bool(self._consumer.memberid())

    def assignment(self) -> list[tuple[str, int]]:
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def group_metadata(self) -> Any:
        """For a transactional sink: send_offsets_to_transaction needs the group's metadata."""
        return self._consumer.consumer_group_metadata()

    def close(self) -> None:
        self._consumer.close()

    # -- client callbacks

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal() or err.code() == KafkaError._AUTHENTICATION:  # a refused login does not heal by retrying
            self._fatal = err
        elif err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            now = time.monotonic()
            if now - self._warned_at >= 5.0:  # librdkafka retries every few ms: one line per 5 s is enough
                self._warned_at = now
                log.warning("broker connection: %s", err.str())

    # An exception in a rebalance callback is kept and re-raised by next_batch, which drops that consume()'s
    # messages with it: such an error is fatal for the processor (it stops, and restarts from committed
    # offsets and its changelog), never something to catch and go on after.
    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._on_assign and self._callback_error is None:
            try:
                self._on_assign([(tp.topic, tp.partition) for tp in partitions])
            except BaseException as err:
                self._callback_error = err

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._on_revoke and self._callback_error is None:
            try:
                self._on_revoke([(tp.topic, tp.partition) for tp in partitions])
            except BaseException as err:
                self._callback_error = err

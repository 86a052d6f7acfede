"""Reading a compacted changelog back (the newest committed value of every key, per partition), and replaying
an input partition between two offsets."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams.config import KafkaConfig
from streams.errors import KafkaClientError


def read_changelog(config: KafkaConfig, topic: str, partitions: Sequence[int], timeout_s: float = 60.0
                   ) -> dict[int, dict[bytes, bytes | None]]:
    """Every key's last committed value (None for a tombstone) in each partition, read to its end."""
    out: dict[int, dict[bytes, bytes | None]] = {p: {} for p in partitions}
    if not partitions:
        return out
    consumer = Consumer({**config.client_config(), "group.id": f"streamquant-restore-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": False})
    try:
        ends: dict[int, int] = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            if high > low:
                ends[p] = high
        if not ends:
            return out
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending = set(ends)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise KafkaClientError(f"restoring {topic} partitions {sorted(pending)} took over {timeout_s:.0f}s")
            for m in consumer.consume(10_000, 0.2):
                if m.error() is not None:
                    raise KafkaClientError(f"restoring {topic}: {m.error().str()}")  # type: ignore[union-attr]
                key = m.key()
                if key is not None:
                    out[m.partition()][key] = m.value()  # type: ignore[index]
            # Positions count transaction markers too: done when the position reaches the end offset.
            for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                if tp.offset >= ends[tp.partition]:
                    pending.discard(tp.partition)
        return out
    finally:
        consumer.close()


def read_range(config: KafkaConfig, topic: str, partition: int, start: int, end: int, chunk: int = 50_000,
               timeout_s: float = 120.0) -> Iterator[list[bytes | None]]:
    """The committed values of one partition from offset `start` up to (not including) `end`, in offset order,
    in lists of up to `chunk`: what a restore replays between a state checkpoint and the committed offset."""
    if end <= start:
        return
    # "error": a start offset the log no longer holds (deleted by retention) fails the replay; the client's
    # default would jump to the end and replay nothing, silently.
    consumer = Consumer({**config.client_config(), "group.id": f"streamquant-restore-replay-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": False, "auto.offset.reset": "error"})
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout_s
        values: list[bytes | None] = []
        while True:
            if time.monotonic() > deadline:
                raise KafkaClientError(f"replaying {topic}[{partition}] {start}..{end} took over {timeout_s:.0f}s")
            for m in consumer.consume(chunk, 0.2):
                if m.error() is not None:
                    raise KafkaClientError(f"replaying {topic}[{partition}] from offset {start}: "
                                           f"{m.error().str()}")  # type: ignore[union-attr]
                if m.offset() < end:  # type: ignore[operator]
                    values.append(m.value())
            if len(values) >= chunk:
                yield values
                values = []
            # Positions count transaction markers too: done when the position reaches the end offset.
            if consumer.position([TopicPartition(topic, partition)])[0].offset >= end:
                break
        if values:
            yield values
    finally:
        consumer.close()

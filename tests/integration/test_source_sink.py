"""The batch source and the sink against the real broker: batching bounds, manual offsets, at-least-once."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from processors.synthetic import MarketSpec, TickGenerator
from schemas.tick_decoder import TickDecoder
from schemas.ticks import encode_columns
from streams.config import KafkaConfig
from streams.errors import KafkaClientError
from streams.sink import KafkaSink
from streams.source import BatchSource


def produce_ticks(kafka: KafkaConfig, topic: str, n: int, seed: int = 1) -> list[Any]:
    chunk = TickGenerator(MarketSpec(symbols=10, seed=seed)).next_chunk(n)
    sink = KafkaSink(kafka)
    sink.write_many(topic, [s.encode() for s in chunk.symbol()], encode_columns(chunk))
    sink.flush()
    return chunk.to_records()


def drain(source: BatchSource, want: int, timeout_s: float = 30.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        batch = source.next_batch()
        got.extend(TickDecoder().decode(batch.values).ticks.to_records())
    return got


def test_batches_are_bounded_by_count_and_by_time(kafka: KafkaConfig, make_topic: Any, unique: str) -> None:
    topic = make_topic("ticks", partitions=1)
    produce_ticks(kafka, topic, 2500)
    source = BatchSource(kafka, f"g-{unique}", [topic], max_messages=1000, max_wait_s=0.5)
    try:
        sizes = []
        while sum(sizes) < 2500:
            batch = source.next_batch()
            assert len(batch) <= 1000
            sizes.append(len(batch))
        assert max(sizes) == 1000
        started = time.monotonic()
        empty = source.next_batch(max_wait_s=0.3)
        assert len(empty) == 0 and time.monotonic() - started < 2.0
    finally:
        source.close()


def test_committed_offsets_resume_and_uncommitted_are_redelivered(kafka: KafkaConfig, make_topic: Any,
                                                                  unique: str) -> None:
    topic = make_topic("ticks", partitions=3)
    sent = produce_ticks(kafka, topic, 600)
    group = f"g-{unique}"

    first = BatchSource(kafka, group, [topic], max_messages=200, max_wait_s=0.5)
    batch = first.next_batch()
    while len(batch) == 0:
        batch = first.next_batch()
    committed_count = len(batch)
    first.commit(batch.next_offsets())
    # Read more but do not commit: a crash here must not lose those messages.
    uncommitted = first.next_batch()
    assert len(uncommitted) >= 0
    first.close()

    second = BatchSource(kafka, group, [topic], max_messages=1000, max_wait_s=0.5)
    try:
        rest = drain(second, len(sent) - committed_count)
    finally:
        second.close()
    assert len(rest) == len(sent) - committed_count
    first_part = TickDecoder().decode(batch.values).ticks.to_records()
    assert sorted(first_part + rest, key=repr) == sorted(sent, key=repr)


def test_read_committed_hides_aborted_transactions(kafka: KafkaConfig, make_topic: Any, unique: str) -> None:
    # The source reads read_committed by default, which the exactly-once sink will rely on.
    from confluent_kafka import Producer

    topic = make_topic("ticks")
    producer = Producer({**kafka.client_config(), "transactional.id": f"tx-{unique}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b'{"symbol":"A","ts":1700000000000,"price":1,"size":1}', b"A")
    producer.flush(30)  # written to the log first, so the abort marker is what hides it
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b'{"symbol":"B","ts":1700000000000,"price":2,"size":1}', b"B")
    producer.commit_transaction(30)

    source = BatchSource(kafka, f"g-{unique}", [topic], max_wait_s=0.5)
    try:
        got = drain(source, 1, timeout_s=15)
        time.sleep(0.5)
        got += TickDecoder().decode(source.next_batch().values).ticks.to_records()
    finally:
        source.close()
    assert [t.symbol for t in got] == ["B"]

    # A read_uncommitted consumer sees the aborted one too: the test would catch a wrong default.
    raw = Consumer({**kafka.client_config(), "group.id": f"raw-{unique}", "auto.offset.reset": "earliest",
                    "isolation.level": "read_uncommitted"})
    raw.subscribe([topic])
    seen: list[bytes] = []
    deadline = time.monotonic() + 15
    while len(seen) < 2 and time.monotonic() < deadline:
        seen += [m.key() for m in raw.consume(10, 0.5) if m.error() is None]  # type: ignore[misc]
    raw.close()
    assert sorted(seen) == [b"A", b"B"]


def test_caught_up_knows_partitions_assigned_at_their_end(kafka: KafkaConfig, make_topic: Any, unique: str) -> None:
    """A partition whose committed offset is already its end yields no message, so the consumer has no
    position for it: `caught_up` must still say yes there, and no while anything is left to read."""
    topic = make_topic("ticks", partitions=2)
    produce_ticks(kafka, topic, 300)
    group = f"g-{unique}"
    first = BatchSource(kafka, group, [topic], max_messages=1000, max_wait_s=0.3)
    try:
        got = 0
        deadline = time.monotonic() + 30
        while got < 300 and time.monotonic() < deadline:
            batch = first.next_batch()
            got += len(batch)
            if len(batch):
                first.commit(batch.next_offsets())
        assert first.caught_up()
    finally:
        first.close()
    produce_ticks(kafka, topic, 50, seed=2)
    second = BatchSource(kafka, group, [topic], max_messages=10, max_wait_s=0.3)
    try:
        while not second.assignment():
            second.next_batch()
        assert not second.caught_up()  # 50 new ticks are waiting
        assert len(drain(second, 50)) >= 40
        while len(second.next_batch()):
            pass
        assert second.caught_up()
    finally:
        second.close()


def test_a_new_owner_waits_for_a_frozen_owners_open_offsets(kafka: KafkaConfig, make_topic: Any,
                                                            unique: str) -> None:
    """The ordering the feature processor's takeover relies on: a transaction that sent offsets for a
    partition and is still open (its owner frozen before commit) holds the next owner's committed-offset
    read until it ends, so state is restored only after what that transaction commits."""
    topic = make_topic("ticks", partitions=1)
    produce_ticks(kafka, topic, 20)
    group = f"g-{unique}"
    owner = BatchSource(kafka, group, [topic], max_messages=5, max_wait_s=0.3)
    frozen = Producer({**kafka.client_config(), "transactional.id": f"tx-{unique}"})
    try:
        while not len(owner.next_batch()):
            pass
        assert owner.is_member()
        frozen.init_transactions(30)
        frozen.begin_transaction()
        frozen.send_offsets_to_transaction([TopicPartition(topic, 0, 5)], owner.group_metadata(), 30)
        with pytest.raises(KafkaClientError, match="still unstable"):
            owner.wait_for_stable_offsets([(topic, 0)], timeout_s=3)
        threading.Timer(2.0, lambda: frozen.commit_transaction(30)).start()
        started = time.monotonic()
        owner.wait_for_stable_offsets([(topic, 0)], timeout_s=30)
        assert time.monotonic() - started >= 1.5  # it waited for the commit, not for nothing
        committed = owner._consumer.committed([TopicPartition(topic, 0)], timeout=10)
        assert committed[0].offset == 5
    finally:
        owner.close()


def test_a_replay_reads_exactly_its_range_and_refuses_a_deleted_start(kafka: KafkaConfig, admin: Any,
                                                                      make_topic: Any, unique: str) -> None:
    """What a restore replays between a checkpoint and the committed offset: the committed values of
    [start, end) in order (an aborted transaction's records and the markers hidden); a start the log no longer
    holds is an error, not a silent jump to the end."""
    from confluent_kafka import Producer

    from streams.changelog import read_range

    topic = make_topic("replay")
    producer = Producer({**kafka.client_config(), "transactional.id": f"tx-{unique}"})
    producer.init_transactions(30)
    for i in range(6):  # offsets: 2 records + 1 marker per transaction; the third one aborted
        producer.begin_transaction()
        producer.produce(topic, f"v{2 * i}".encode(), partition=0)
        producer.produce(topic, f"v{2 * i + 1}".encode(), partition=0)
        producer.flush(30)
        if i == 2:
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
    got = [v for chunk in read_range(kafka, topic, 0, 3, 15, chunk=2) for v in chunk]
    # offsets 3,4 = v2,v3 (2 is a marker); 6,7 aborted (v4, v5); 9,10 = v6,v7; 12,13 = v8,v9; 15+ excluded
    assert got == [b"v2", b"v3", b"v6", b"v7", b"v8", b"v9"]
    assert list(read_range(kafka, topic, 0, 5, 5)) == []

    from confluent_kafka import TopicPartition as TP

    for fut in admin.delete_records([TP(topic, 0, 9)], operation_timeout=30).values():
        fut.result(timeout=30)
    with pytest.raises(KafkaClientError, match="from offset 3"):
        list(read_range(kafka, topic, 0, 3, 15, timeout_s=20))

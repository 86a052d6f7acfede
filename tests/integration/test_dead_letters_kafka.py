"""Bad messages on a real topic: the good ones decode, the bad ones land in the DLQ with their reason."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, Producer

from schemas.tick_decoder import TickDecoder
from streams.config import KafkaConfig
from streams.dlq import dead_letters_for, header_dict
from streams.metrics import DEAD_LETTERS
from streams.sink import KafkaSink
from streams.source import BatchSource

GOOD = b'{"symbol":"AAPL","ts":1700000000000,"price":189.52,"size":100}'


def run_ingest_once(kafka: KafkaConfig, topic: str, dlq: str, group: str, want: int) -> list[Any]:
    """What every processor does per micro-batch: decode, dead-letter the rejects, commit."""
    source = BatchSource(kafka, group, [topic], max_wait_s=0.5)
    sink = KafkaSink(kafka)
    ticks: list[Any] = []
    seen = 0
    deadline = time.monotonic() + 30
    try:
        while seen < want and time.monotonic() < deadline:
            batch = source.next_batch()
            if not len(batch):
                continue
            seen += len(batch)
            decoded = TickDecoder().decode(batch.values)
            ticks += decoded.ticks.to_records()
            sink.write_dead_letters(dead_letters_for(batch, decoded.rejects, processor="test-ingest", dlq_topic=dlq))
            sink.commit(source, batch.next_offsets())
    finally:
        source.close()
    return ticks


def read_all(kafka: KafkaConfig, topic: str, want: int, group: str) -> list[Any]:
    consumer = Consumer({**kafka.client_config(), "group.id": group, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + 30
    while len(out) < want and time.monotonic() < deadline:
        out += [m for m in consumer.consume(100, 0.5) if m.error() is None]
    consumer.close()
    return out


def test_bad_messages_go_to_the_dlq_with_headers(kafka: KafkaConfig, make_topic: Any, unique: str) -> None:
    topic = make_topic("ticks", partitions=2)
    dlq = make_topic("ticks.dlq", partitions=2)
    bad = [b"{oops", b'{"symbol":"AAPL","ts":1700000000000,"price":-1,"size":1}', b""]
    producer = Producer(kafka.client_config())
    for i, value in enumerate([GOOD, *bad, GOOD]):
        producer.produce(topic, value, key=f"k{i}".encode(), headers=[("origin", b"test")], partition=0)
    producer.flush(30)
    before = DEAD_LETTERS.labels(topic, "not_json")._value.get()

    ticks = run_ingest_once(kafka, topic, dlq, f"g-{unique}", want=5)
    assert [t.symbol for t in ticks] == ["AAPL", "AAPL"]

    letters = read_all(kafka, dlq, 3, f"r-{unique}")
    assert sorted(m.value() for m in letters) == sorted(bad)
    by_value = {m.value(): m for m in letters}
    h = header_dict(by_value[b"{oops"].headers())
    assert h["sq.error.class"] == "not_json"
    assert h["sq.source.topic"] == topic and h["sq.source.partition"] == "0" and h["sq.source.offset"] == "1"
    assert h["sq.processor"] == "test-ingest" and h["origin"] == "test"
    assert by_value[b"{oops"].key() == b"k1"
    assert header_dict(by_value[bad[1]].headers())["sq.error.class"] == "out_of_range"
    assert header_dict(by_value[b""].headers())["sq.error.class"] == "not_json"
    assert DEAD_LETTERS.labels(topic, "not_json")._value.get() == before + 2

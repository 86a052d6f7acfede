"""Ticks for a symbol land on the partition Java's clients pick (murmur2), whichever client writes them."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer

from streams.config import KafkaConfig
from streams.sink import KafkaSink


def java_murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2 (seed 0x9747b28c), written out as the Java source does it."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def java_partition(key: bytes, partitions: int) -> int:
    return (java_murmur2(key) & 0x7FFFFFFF) % partitions


def test_keys_are_partitioned_like_the_java_client(kafka: KafkaConfig, make_topic: Any, unique: str) -> None:
    topic = make_topic("ticks", partitions=8)
    keys = [f"S{i:03d}".encode() for i in range(60)] + [b"AAPL", b"BRK.B", b"BTC-USD", b"X"]
    sink = KafkaSink(kafka)
    sink.write_many(topic, keys, [b"{}"] * len(keys))
    sink.flush()

    consumer = Consumer({**kafka.client_config(), "group.id": f"g-{unique}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen: dict[bytes, int] = {}
    deadline = time.monotonic() + 30
    while len(seen) < len(keys) and time.monotonic() < deadline:
        for m in consumer.consume(100, 0.5):
            if m.error() is None and m.key() is not None:
                seen[m.key()] = m.partition()  # type: ignore[index]
    consumer.close()
    assert seen == {k: java_partition(k, 8) for k in keys}
    assert len(set(seen.values())) > 4  # the keys spread over the partitions

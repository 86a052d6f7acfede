"""Small Kafka conveniences for the CLI: reachability checks and reading a topic's newest messages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from aiokafka.partitioner import murmur2
from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.config import KafkaConfig
from streams.errors import AuthenticationFailed, BrokerUnavailable
from streams.source import Headers


def admin_client(config: KafkaConfig, timeout_s: float = 5.0) -> AdminClient:
    """An admin client, after checking the cluster answers within `timeout_s`."""
    # Quiet: an unreachable broker gets one clear line below instead of librdkafka retry noise.
    seen: list[KafkaError] = []
    conf: dict[str, Any] = {**config.client_config(), "socket.connection.setup.timeout.ms": int(timeout_s * 1000),
                            "log_level": 2, "error_cb": seen.append}
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=min(0.5, max(deadline - time.monotonic(), 0.05)))
            return admin
        except KafkaException:
            admin.poll(0)  # serve error callbacks: a refused login or handshake says more than a timeout
            check_login(config, seen)
            if time.monotonic() < deadline:
                continue
        raise BrokerUnavailable(
            f"cannot reach Kafka at {config.bootstrap} within {timeout_s:.0f}s "
            "(start the local stack with `make up` or set STREAMQUANT_KAFKA_BOOTSTRAP)"
        ) from None


def check_login(config: KafkaConfig, errors: list[KafkaError]) -> None:
    """Raises one clear line when the client's errors show rejected credentials or a failed TLS handshake
    (never the secret itself)."""
    for err in errors:
        if err.code() == KafkaError._AUTHENTICATION:
            who = f"user {config.sasl_username!r}" if config.sasl_username else "this client"
            raise AuthenticationFailed(
                f"Kafka at {config.bootstrap} rejected the login of {who} ({config.security_protocol}"
                f"{'/' + config.sasl_mechanism if config.sasl_mechanism else ''}): check "
                "STREAMQUANT_KAFKA_SASL_USERNAME and STREAMQUANT_KAFKA_SASL_PASSWORD")
        if err.code() == KafkaError._SSL:
            raise AuthenticationFailed(
                f"TLS handshake with Kafka at {config.bootstrap} failed ({err.str()}): check "
                "STREAMQUANT_KAFKA_SSL_CA_LOCATION (the CA that signed the broker's certificate)")


def topic_partitions(admin: AdminClient, topic: str, timeout_s: float = 5.0) -> list[int] | None:
    meta = admin.list_topics(topic=topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None:
        return None
    return sorted(meta.partitions)


@dataclass(frozen=True, slots=True)
class RawMessage:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None


def newest_messages(config: KafkaConfig, topic: str, partitions: list[int], n: int,
                    timeout_s: float = 10.0) -> tuple[list[RawMessage], dict[int, int]]:
    """The last `n` committed messages of a topic (by broker timestamp, across partitions), and the end
    offset of each partition when they were read (where following the topic carries on)."""
    consumer = Consumer({**config.client_config(), "group.id": f"streamquant-tail-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        assignment = []
        ends: dict[int, int] = {}
        all_ends: dict[int, int] = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            all_ends[p] = high
            if high > low:
                ends[p] = high
                assignment.append(TopicPartition(topic, p, max(low, high - n)))
        if not assignment:
            return [], all_ends
        consumer.assign(assignment)
        out: list[RawMessage] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends) and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                if m.error():
                    continue
                p, offset = cast(int, m.partition()), cast(int, m.offset())
                out.append(RawMessage(p, offset, m.timestamp()[1], m.key(), m.value(),
                                      cast(Headers | None, m.headers())))
                if offset >= ends[p] - 1:
                    done.add(p)
            # Control records (transaction markers) occupy offsets too: stop at the position.
            for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition] or tp.offset == OFFSET_END:
                    done.add(tp.partition)
        out.sort(key=lambda m: (m.timestamp, m.partition, m.offset))
        return out[-n:], all_ends
    finally:
        consumer.close()


def follow_messages(config: KafkaConfig, topic: str, start: dict[int, int], seconds: float | None
                    ) -> Iterator[RawMessage]:
    """Committed messages as they arrive, from the given offsets, for `seconds` (None: until interrupted)."""
    consumer = Consumer({**config.client_config(), "group.id": f"streamquant-tail-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            for m in consumer.consume(500, 0.2):
                if m.error() is None:
                    yield RawMessage(cast(int, m.partition()), cast(int, m.offset()), m.timestamp()[1], m.key(),
                                     m.value(), cast(Headers | None, m.headers()))
    finally:
        consumer.close()


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Java's default partitioner (and ours, murmur2) gives a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def end_offset(config: KafkaConfig, topic: str, partition: int, timeout_s: float = 10.0) -> int:
    consumer = Consumer({**config.client_config(), "group.id": f"streamquant-cli-{uuid.uuid4()}"})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)[1])
    finally:
        consumer.close()


def last_for_key(config: KafkaConfig, topic: str, key: bytes, partitions: int,
                 timeout_s: float = 30.0) -> RawMessage | None:
    """The newest committed message with `key` (read from its partition's start to its current end)."""
    p = partition_for_key(key, partitions)
    consumer = Consumer({**config.client_config(), "group.id": f"streamquant-cli-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        if high <= low:
            return None
        consumer.assign([TopicPartition(topic, p, low)])
        found: RawMessage | None = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.2):
                if m.error() is None and m.key() == key:
                    found = RawMessage(p, cast(int, m.offset()), m.timestamp()[1], m.key(), m.value(),
                                       cast(Headers | None, m.headers()))
            position = consumer.position([TopicPartition(topic, p)])[0].offset
            if position >= high:
                break
        return found
    finally:
        consumer.close()

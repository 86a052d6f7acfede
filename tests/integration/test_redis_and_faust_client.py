"""The other real parts: Redis answers, and faust-streaming (through aiokafka) works with Kafka 4."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

import aiokafka
import redis
from confluent_kafka import Consumer, Producer

from streams.config import KafkaConfig


def test_redis_round_trip(redis_url: str, unique: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        key = f"sq-test:{unique}"
        client.set(key, b"v", ex=30)
        assert client.get(key) == b"v"
        assert client.delete(key) == 1
    finally:
        client.close()


def test_aiokafka_produces_consumes_and_commits_on_kafka_4(kafka: KafkaConfig, make_topic: object,
                                                            unique: str) -> None:
    # faust-streaming talks to Kafka through aiokafka; Kafka 4 dropped old protocol versions (KIP-896).
    assert importlib.metadata.version("faust-streaming")
    topic = make_topic("faust")  # type: ignore[operator]

    async def main() -> tuple[list[bytes], int]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            for i in range(3):
                await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k")
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, group_id=f"g-{unique}",
                                             auto_offset_reset="earliest", enable_auto_commit=False,
                                             isolation_level="read_committed")
        await consumer.start()
        try:
            got: list[bytes] = []
            while len(got) < 3:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
                got += [m.value for msgs in batch.values() for m in msgs if m.value is not None]
            await consumer.commit()
            committed = await consumer.committed(aiokafka.TopicPartition(topic, 0))
        finally:
            await consumer.stop()
        return got, committed or -1

    got, committed = asyncio.run(main())
    assert got == [b"m0", b"m1", b"m2"]
    assert committed == 3


def test_a_faust_worker_consumes_and_produces_on_kafka_4(kafka: KafkaConfig, make_topic: object,
                                                          unique: str, tmp_path: Path) -> None:
    source = make_topic("faust-in", 2)  # type: ignore[operator]
    sink = make_topic("faust-out", 2)  # type: ignore[operator]
    producer = Producer(kafka.client_config())
    for i in range(5):
        producer.produce(source, f"m{i}".encode(), key=f"k{i}".encode())
    producer.flush(30)
    env = {**os.environ, "SQ_FAUST_BROKER": kafka.bootstrap, "SQ_FAUST_ID": f"sq-faust-{unique}",
           "SQ_FAUST_IN": source, "SQ_FAUST_OUT": sink, "SQ_FAUST_COUNT": "5"}
    app = Path(__file__).with_name("faust_echo_app.py")
    worker = subprocess.run([sys.executable, str(app), "worker", "-l", "warn"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in worker.stderr, worker.stderr[-2000:]

    consumer = Consumer({**kafka.client_config(), "group.id": f"r-{unique}", "auto.offset.reset": "earliest"})
    consumer.subscribe([sink])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 5 and time.monotonic() < deadline:
        got += [m.value() for m in consumer.consume(10, 0.5) if m.error() is None]  # type: ignore[misc]
    consumer.close()
    assert sorted(got) == [b"M0", b"M1", b"M2", b"M3", b"M4"], worker.stderr[-2000:]

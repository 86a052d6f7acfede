"""The other real parts: Redis answers, and faust-streaming's Kafka client (aiokafka) works with Kafka 4."""

from __future__ import annotations

import asyncio
import importlib.metadata

import aiokafka
import redis

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

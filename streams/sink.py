"""The sink: writes outputs and dead letters, then commits the source's offsets once they are durable.

`KafkaSink.commit` is at-least-once: flush, check every delivery, only then commit offsets, so a
crash can repeat a batch but never lose one. The transactional sink of the feature processor keeps
this interface and commits outputs and offsets in one Kafka transaction instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.config import KafkaConfig
from streams.dlq import H_ERROR_CLASS, DeadLetter
from streams.errors import KafkaClientError
from streams.metrics import DEAD_LETTERS, MESSAGES_PRODUCED
from streams.source import BatchSource, Headers

log = logging.getLogger(__name__)


class Sink(Protocol):
    """What processors write through; in-memory and transactional versions keep the same shape."""

    def write(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None) -> None: ...

    def write_many(self, topic: str, keys: Sequence[bytes | None], values: Sequence[bytes]) -> None: ...

    def write_dead_letters(self, letters: Iterable[DeadLetter]) -> None: ...

    def commit(self, source: BatchSource, offsets: dict[tuple[str, int], int]) -> None: ...


class KafkaSink:
    """Produces to Kafka with idempotence on; `commit` makes outputs durable before offsets move."""

    def __init__(self, config: KafkaConfig, *, extra: dict[str, Any] | None = None,
                 flush_timeout_s: float = 30.0) -> None:
        conf: dict[str, Any] = {
            **config.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            # Java's partitioner: the same key lands on the same partition whichever client wrote it.
            "partitioner": "murmur2_random",
            "error_cb": self._on_error,
            **(extra or {}),
        }
        self._producer = Producer(conf)
        self._flush_timeout_s = flush_timeout_s
        self._failed: list[str] = []
        self._fatal: KafkaError | None = None

    def write(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None) -> None:
        self._produce(topic, key, value, headers)
        MESSAGES_PRODUCED.labels(topic).inc()

    def write_many(self, topic: str, keys: Sequence[bytes | None], values: Sequence[bytes]) -> None:
        for key, value in zip(keys, values, strict=True):
            self._produce(topic, key, value, None)
        MESSAGES_PRODUCED.labels(topic).inc(len(values))

    def write_dead_letters(self, letters: Iterable[DeadLetter]) -> None:
        for letter in letters:
            self._produce(letter.topic, letter.key, letter.value, letter.headers)
            error_class = next((v for k, v in letter.headers if k == H_ERROR_CLASS), b"") or b""
            source = letter.topic.removesuffix(".dlq")
            DEAD_LETTERS.labels(source, error_class.decode()).inc()

    def flush(self) -> None:
        """Waits until everything written is acknowledged; raises if anything failed."""
        remaining = self._producer.flush(self._flush_timeout_s)
        if self._fatal is not None:
            raise KafkaClientError(f"producer failed: {self._fatal.str()}")
        if remaining:
            raise KafkaClientError(f"{remaining} messages not delivered within {self._flush_timeout_s:.0f}s")
        if self._failed:
            failed, self._failed = self._failed, []
            raise KafkaClientError(f"{len(failed)} messages failed delivery; first: {failed[0]}")

    def commit(self, source: BatchSource, offsets: dict[tuple[str, int], int]) -> None:
        self.flush()
        source.commit(offsets)

    def poll(self) -> None:
        self._producer.poll(0)

    def close(self) -> None:
        self._producer.flush(self._flush_timeout_s)

    # -- internals

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, headers=cast(Any, headers), on_delivery=self._delivered)
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self._producer.poll(0.05)
            except KafkaException as err:
                raise KafkaClientError(f"cannot produce to {topic}: {err.args[0].str()}") from None

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append(f"{msg.topic()}: {err.str()}")

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
        else:
            log.warning("producer: %s", err.str())

"""Which client calls a transactional sink makes per batch (logic, with a recording stand-in for the producer).

A batch that writes nothing and commits no offsets (most batches of the feature processor) must not touch the
client at all; a batch that writes begins the client's transaction once, before its first record. What the
broker does with those calls is tested against the real broker in tests/integration."""

from __future__ import annotations

from typing import Any

import pytest

import streams.transactions as tx
from streams.config import KafkaConfig


class _Producer:
    def __init__(self, conf: dict[str, Any]) -> None:
        self.calls: list[str] = []
        self.open = False

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init")

    def begin_transaction(self) -> None:
        assert not self.open, "begin_transaction with a transaction open"
        self.open = True
        self.calls.append("begin")

    def produce(self, topic: str, value: bytes | None, key: bytes | None, *args: Any, **kwargs: Any) -> None:
        assert self.open, "produce outside a transaction"
        self.calls.append(f"produce {topic}")

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        assert self.open, "offsets outside a transaction"
        self.calls.append(f"offsets {len(offsets)}")

    def commit_transaction(self, timeout: float) -> None:
        assert self.open, "commit without a transaction"
        self.open = False
        self.calls.append("commit")

    def abort_transaction(self, timeout: float) -> None:
        assert self.open, "abort without a transaction"
        self.open = False
        self.calls.append("abort")

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


class _Source:
    def group_metadata(self) -> object:
        return object()


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> tx.TransactionalSink:
    monkeypatch.setattr(tx, "Producer", _Producer)
    s = tx.TransactionalSink(KafkaConfig(), "calls-test")
    producer: _Producer = s._producer  # type: ignore[assignment]
    producer.calls.clear()
    return s


def calls(sink: tx.TransactionalSink) -> list[str]:
    producer: _Producer = sink._producer  # type: ignore[assignment]
    out, producer.calls = producer.calls, []
    return out


def test_a_batch_that_writes_nothing_makes_no_client_call(sink: tx.TransactionalSink) -> None:
    for _ in range(3):
        sink.begin()
        sink.commit(_Source(), {})  # type: ignore[arg-type]
    sink.begin()
    sink.abort()
    assert calls(sink) == []
    assert not sink.wrote


def test_a_writing_batch_begins_once_before_its_first_record(sink: tx.TransactionalSink) -> None:
    sink.begin()
    sink.write("bars", b"k", b"v")
    sink.write_many("features", [b"a", b"b"], [b"1", b"2"])
    sink.write_many("features", [], [])
    assert sink.wrote
    sink.commit(_Source(), {("ticks", 0): 10, ("ticks", 1): 4})  # type: ignore[arg-type]
    assert calls(sink) == ["begin", "produce bars", "produce features", "produce features", "offsets 2", "commit"]
    sink.begin()
    sink.write_many("features", [b"a"], [b"1"])
    sink.commit(_Source(), {})  # type: ignore[arg-type]
    assert calls(sink) == ["begin", "produce features", "commit"]


def test_offsets_alone_begin_the_client_transaction(sink: tx.TransactionalSink) -> None:
    sink.begin()
    sink.commit(_Source(), {("ticks", 3): 7})  # type: ignore[arg-type]
    assert calls(sink) == ["begin", "offsets 1", "commit"]


def test_an_abort_ends_only_a_transaction_the_client_began(sink: tx.TransactionalSink) -> None:
    sink.begin()
    sink.write("bars", b"k", b"v")
    sink.abort()
    assert calls(sink) == ["begin", "produce bars", "abort"]
    sink.begin()  # the next batch starts clean: its first record begins a new client transaction
    sink.write("bars", b"k", b"v")
    sink.commit(_Source(), {})  # type: ignore[arg-type]
    assert calls(sink) == ["begin", "produce bars", "commit"]

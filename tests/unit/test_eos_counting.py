"""The exactly-once loop counts a batch's outputs once, when its transaction commits (logic, with fakes)."""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from processors.eos import EosProcessor
from streams.errors import TransactionAborted
from streams.source import MessageBatch


class _Source:
    def __init__(self) -> None:
        self.seeks = 0

    def next_batch(self) -> MessageBatch:
        return MessageBatch(topics=["t", "t"], partitions=np.array([0, 0], np.int32), offsets=np.array([4, 5]),
                            values=[b"a", b"b"], timestamps=np.array([1, 2]))

    def is_member(self) -> bool:
        return True

    def seek(self, offsets: Any) -> None:
        self.seeks += 1

    def lag(self) -> dict[tuple[str, int], int]:
        return {("t", 0): 0}

    def assignment(self) -> list[tuple[str, int]]:
        return [("t", 0)]


class _Sink:
    def __init__(self, failures: int) -> None:
        self.failures = failures

    def commit(self, source: Any, offsets: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise TransactionAborted("broker said so")


class _Counting(EosProcessor):
    NAME = "test"

    def __init__(self, counter: Counter, failures: int) -> None:
        self.counter = counter
        super().__init__(lambda _a, _r: _Source(), lambda: _Sink(failures))  # type: ignore[arg-type, return-value]

    def _process(self, batch: MessageBatch) -> Any:
        self.after_commit(self.counter, len(batch))
        return None


def test_an_aborted_and_reread_batch_is_counted_once() -> None:
    counter = Counter("outputs", "test", registry=CollectorRegistry())
    proc = _Counting(counter, failures=2)
    assert proc.step() == 0 and proc.step() == 0  # aborted twice, re-read each time
    assert counter._value.get() == 0
    assert proc.step() == 2
    assert counter._value.get() == 2
    assert proc.source.seeks == 2  # type: ignore[attr-defined]

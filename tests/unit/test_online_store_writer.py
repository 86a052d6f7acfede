"""The online store's background writer: batches leave the stream at once, reach the store in order, newer
vectors of a key replace queued older ones, a failing store never stops it, and close writes what is queued."""

from __future__ import annotations

import threading
from typing import Any

from processors.online_store import BackgroundWriter


class SlowStore:
    """Records each put_many; the first call blocks until released, so that later batches queue up."""

    def __init__(self, fail_first: bool = False) -> None:
        self.calls: list[dict[Any, Any]] = []
        self.release = threading.Event()
        self.fail_first = fail_first

    def put_many(self, vectors: dict[Any, Any]) -> bool:
        if not self.calls:
            self.release.wait(5)
        self.calls.append(dict(vectors))
        if self.fail_first and len(self.calls) == 1:
            raise ConnectionError("redis is down")
        return True


def test_queued_batches_coalesce_in_order_and_close_writes_them() -> None:
    store = SlowStore()
    writer = BackgroundWriter(store)  # type: ignore[arg-type]
    writer.put_many({("A", "1s"): (1, {"x": 1.0})})
    while writer._busy is False:  # the thread took the first batch and waits in the store
        pass
    writer.put_many({("A", "1s"): (2, {"x": 2.0}), ("B", "1s"): (2, {"x": 5.0})})
    writer.put_many({("A", "1s"): (3, {"x": 3.0})})
    store.release.set()
    writer.close()
    assert store.calls == [{("A", "1s"): (1, {"x": 1.0})},
                           {("A", "1s"): (3, {"x": 3.0}), ("B", "1s"): (2, {"x": 5.0})}]


def test_a_failing_store_does_not_stop_the_writer() -> None:
    store = SlowStore(fail_first=True)
    store.release.set()
    writer = BackgroundWriter(store)  # type: ignore[arg-type]
    writer.put_many({("A", "1s"): (1, {})})
    assert writer.flush()
    writer.put_many({("A", "1s"): (2, {})})
    writer.close()
    assert [c[("A", "1s")][0] for c in store.calls] == [1, 2]

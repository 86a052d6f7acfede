"""The online feature store: the latest feature vector of each (symbol, interval) in Redis, for request-reply
Predict by symbol.

The feature processor writes a batch's vectors only after its transaction committed, so the store never shows
a vector that Kafka readers could not see. Redis being down never stops the stream: failures are counted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import orjson
from prometheus_client import Counter

log = logging.getLogger(__name__)
PREFIX = "streamquant:features:"
WRITES = Counter("streamquant_online_store_writes_total", "Feature vectors written to the online store")
ERRORS = Counter("streamquant_online_store_errors_total", "Online store operations that failed", ["op"])

Vector = tuple[int, dict[str, float | None]]  # (bar ts, values)


def store_key(interval: str, symbol: str, namespace: str = "") -> str:
    """`namespace` keeps deployments sharing a Redis apart (the topic prefix)."""
    return f"{PREFIX}{namespace}{interval}:{symbol}"


class OnlineStore:
    """`client` is a redis.Redis (sync: writes happen between batches, reads in the Predict service)."""

    def __init__(self, client: Any, ttl_s: int = 86_400, namespace: str = "") -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.namespace = namespace

    def put_many(self, vectors: Mapping[tuple[str, str], Vector]) -> bool:
        """Writes {(symbol, interval): (ts, values)}; False (and counted) when Redis failed."""
        if not vectors:
            return True
        try:
            pipe = self.client.pipeline(transaction=False)
            for (symbol, interval), (ts, values) in vectors.items():
                value = orjson.dumps({"ts": ts, "values": values})
                pipe.set(store_key(interval, symbol, self.namespace), value, ex=self.ttl_s)
            pipe.execute()
        except Exception as err:  # any Redis failure: counted, the stream goes on
            ERRORS.labels("write").inc()
            log.warning("online store write failed: %s", err)
            return False
        WRITES.inc(len(vectors))
        return True

    def get_many(self, interval: str, symbols: list[str]) -> list[Vector | None]:
        raw = self.client.mget([store_key(interval, s, self.namespace) for s in symbols])
        return [None if r is None else _vector(orjson.loads(r)) for r in raw]


class BackgroundWriter:
    """`put_many` handed to a thread of its own, so that a batch never waits on a Redis round trip.

    Vectors queue up until the thread takes them; a newer vector of a (symbol, interval) replaces an older one
    not yet written (only the latest is kept anyway). Batches are written in the order they came, so the store
    never goes back in time. `close` writes what is still queued (bounded by its timeout)."""

    def __init__(self, store: OnlineStore) -> None:
        self.store = store
        self._pending: dict[tuple[str, str], Vector] = {}
        self._wake = threading.Condition()
        self._closed = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="online-store", daemon=True)
        self._thread.start()

    def put_many(self, vectors: Mapping[tuple[str, str], Vector]) -> None:
        if not vectors:
            return
        with self._wake:
            self._pending.update(vectors)
            self._wake.notify()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Waits until everything queued so far is written (or failed); False on timeout."""
        with self._wake:
            return self._wake.wait_for(lambda: not self._pending and not self._busy, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self.flush(timeout_s)
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                batch, self._pending, self._busy = self._pending, {}, True
            try:
                self.store.put_many(batch)  # counts Redis failures itself
            except Exception as err:  # anything else: counted, and the writer goes on
                ERRORS.labels("write").inc()
                log.warning("online store write failed: %s", err)
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()


def _vector(obj: dict[str, Any]) -> Vector:
    return int(obj["ts"]), dict(obj["values"])

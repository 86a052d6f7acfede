"""The online feature store: the latest feature vector of each (symbol, interval) in Redis, for request-reply
Predict by symbol.

The feature processor writes a batch's vectors only after its transaction committed, so the store never shows
a vector that Kafka readers could not see. Redis being down never stops the stream: failures are counted.
"""

from __future__ import annotations

import logging
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


def _vector(obj: dict[str, Any]) -> Vector:
    return int(obj["ts"]), dict(obj["values"])

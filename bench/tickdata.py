"""The benchmark's input: seeded synthetic ticks as JSON message values."""

from __future__ import annotations

from processors.synthetic import MarketSpec, TickGenerator
from schemas.ticks import encode_columns
from streams.config import KafkaConfig
from streams.sink import KafkaSink


def make_messages(n: int, symbols: int = 500, seed: int = 42, bad_every: int = 0) -> list[bytes]:
    gen = TickGenerator(MarketSpec(symbols=symbols, seed=seed, rate=50_000))
    out: list[bytes] = []
    while len(out) < n:
        out += encode_columns(gen.next_chunk(min(100_000, n - len(out))))
    if bad_every:
        # Alternate a value error (negative price) and a truncated message (malformed JSON).
        for k, i in enumerate(range(bad_every // 2, n, bad_every)):
            out[i] = b'{"symbol":"BAD","ts":1700000000000,"price":-1,"size":1}' if k % 2 else out[i][:-7]
    return out


def preload(kafka: KafkaConfig, topic: str, ticks: int, symbols: int = 500) -> int:
    """Produces `ticks` synthetic JSON ticks (seed 5, keyed by symbol) into `topic`; returns how many."""
    gen = TickGenerator(MarketSpec(symbols=symbols, seed=5, rate=20_000, start_ms=1_767_225_600_000))
    sink = KafkaSink(kafka)
    sent = 0
    while sent < ticks:
        chunk = gen.next_chunk(min(100_000, ticks - sent))
        sink.write_many(topic, [s.encode() for s in chunk.symbol()], encode_columns(chunk))
        sent += len(chunk)
    sink.flush()
    return sent

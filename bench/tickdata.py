"""The benchmark's input: seeded synthetic ticks as JSON message values, saved for the peer runs."""

from __future__ import annotations

import struct
from pathlib import Path

from processors.synthetic import MarketSpec, TickGenerator
from schemas.ticks import encode_columns


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


def save(messages: list[bytes], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for m in messages:
            f.write(struct.pack("<I", len(m)))
            f.write(m)


def load(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out

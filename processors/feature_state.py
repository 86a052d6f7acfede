"""The feature processor's state as changelog records: one per symbol, plus one per partition.

A symbol's record holds, for each interval, its open bars and its indicator state; the partition
record holds the per-interval event-time high marks and arrival counters, and a fingerprint of the
configuration (a changelog written with other intervals or features cannot be resumed). Values are
MessagePack, which keeps every float bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

import msgspec
import numpy as np

from gpu_kernels.bars import BarState
from gpu_kernels.features import FeatureState
from processors.features import EngineConfig, FeatureEngine, PartitionState

PARTITION_KEY = b"\x00partition"
_BAR_INT = ("start", "open_ts", "open_seq", "close_ts", "close_seq")
_BAR_FLOAT = ("open", "high", "low", "close", "volume", "pv")


class StateError(Exception):
    """A changelog that cannot be restored into this processor (other configuration, unknown version)."""


def fingerprint(config: EngineConfig) -> str:
    text = repr((config.intervals, config.lateness_ms, config.features))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_symbols(engine: FeatureEngine, state: PartitionState, symbols: Iterable[str]) -> list[tuple[bytes, bytes]]:
    """(key, value) changelog records for these symbols."""
    by_slot = {iv: _rows_by_key(state.bars[iv]) for iv in engine.config.intervals}
    fs = state.features
    out = []
    for symbol in symbols:
        series = {}
        for iv in engine.config.intervals:
            slot = state.slots.get((symbol, iv))
            if slot is None:
                continue
            b = state.bars[iv]
            rows = by_slot[iv].get(slot, [])
            bars = [[int(getattr(b, f)[r]) for f in _BAR_INT] + [float(getattr(b, f)[r]) for f in _BAR_FLOAT]
                    + [int(b.trades[r])] for r in rows]
            if fs is None or slot >= fs.slots:
                raise StateError(f"no indicator state row for {symbol} {iv}")
            counts = [int(c[slot]) for c in fs.counts]
            vals = [v[slot].tolist() for v in fs.vals]
            series[iv] = {"bars": bars, "counts": counts, "vals": vals}
        out.append((symbol.encode(), msgspec.msgpack.encode({"v": 1, "series": series})))
    return out


def encode_partition(engine: FeatureEngine, state: PartitionState) -> tuple[bytes, bytes]:
    record = {
        "v": 1,
        "config": fingerprint(engine.config),
        "max_ts": {iv: int(state.bars[iv].max_ts) for iv in engine.config.intervals},
        "next_seq": {iv: int(state.bars[iv].next_seq) for iv in engine.config.intervals},
    }
    return PARTITION_KEY, msgspec.msgpack.encode(record)


def decode_state(engine: FeatureEngine, records: dict[bytes, bytes | None]) -> PartitionState:
    """The partition state from its changelog (the newest record per key)."""
    part = records.get(PARTITION_KEY)
    if part is None:
        return engine.empty_state()
    meta = msgspec.msgpack.decode(part)
    if meta.get("v") != 1:
        raise StateError(f"changelog partition record version {meta.get('v')} is not supported")
    if meta["config"] != fingerprint(engine.config):
        raise StateError("the changelog was written with other intervals, lateness or features; "
                         "use a new changelog (or consumer group) for a new configuration")
    slots: dict[tuple[str, str], int] = {}
    bar_rows: dict[str, list[list[float]]] = {iv: [] for iv in engine.config.intervals}
    bar_keys: dict[str, list[int]] = {iv: [] for iv in engine.config.intervals}
    groups = len(engine.feature_set.empty_state().counts)
    counts: list[list[int]] = [[] for _ in range(groups)]
    vals: list[list[list[float]]] = [[] for _ in range(groups)]
    for key in sorted(k for k, v in records.items() if k != PARTITION_KEY and v is not None):
        value = records[key]
        assert value is not None
        rec = msgspec.msgpack.decode(value)
        symbol = key.decode()
        for iv, s in rec["series"].items():
            slot = slots.setdefault((symbol, iv), len(slots))
            for row in s["bars"]:
                bar_rows[iv].append(row)
                bar_keys[iv].append(slot)
            for g in range(groups):
                counts[g].append(s["counts"][g])
                vals[g].append(s["vals"][g])
    widths = [v.shape[1] for v in engine.feature_set.empty_state().vals]
    features = FeatureState(
        counts=tuple(np.array(c, np.int64) for c in counts),
        vals=tuple(np.array(v, np.float64).reshape(len(v), w) for v, w in zip(vals, widths, strict=True)),
    )
    bars = {iv: _bar_state(bar_keys[iv], bar_rows[iv], meta["max_ts"][iv], meta["next_seq"][iv])
            for iv in engine.config.intervals}
    return PartitionState(slots, bars, features)


def _bar_state(keys: list[int], rows: list[list[float]], max_ts: int, next_seq: int) -> BarState:
    if not rows:
        return dataclasses.replace(BarState.empty(), max_ts=max_ts, next_seq=next_seq)
    arr = np.array(rows, dtype=object)
    key = np.array(keys, np.int64)
    start = np.array(arr[:, 0], np.int64)
    order = np.lexsort((start, key))

    def ints(i: int) -> np.ndarray:
        return np.array(arr[:, i], np.int64)[order]

    def floats(i: int) -> np.ndarray:
        return np.array(arr[:, i], np.float64)[order]

    return BarState(key=key[order], start=start[order], open_ts=ints(1), open_seq=ints(2), close_ts=ints(3),
                    close_seq=ints(4), open=floats(5), high=floats(6), low=floats(7), close=floats(8),
                    volume=floats(9), pv=floats(10), trades=ints(11), max_ts=max_ts, next_seq=next_seq)


def _rows_by_key(b: BarState) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, k in enumerate(b.key.tolist()):
        out.setdefault(k, []).append(i)
    return out

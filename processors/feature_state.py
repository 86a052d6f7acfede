"""The feature processor's state as changelog records: one per symbol, plus one per partition.

A symbol's record holds, for each interval, its open bars and its indicator state; the partition
record holds the per-interval event-time high marks and arrival counters, and a fingerprint of the
configuration (a changelog written with other intervals or features cannot be resumed). Values are
MessagePack maps whose arrays are raw little-endian bytes: every float kept bit for bit.

A checkpoint of a partition is the records of every symbol whose state moved since the last one, then the
partition record, all carrying the input offset the state stands at (`at`, `offset`). The newest partition
record says where the partition's state stands; a symbol record never stands later than it (a later one
means a checkpoint was read in part, and the restore must read again).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

import msgspec
import numpy as np

from gpu_kernels.bars import BarState
from gpu_kernels.features import FeatureState
from processors.errors import ProcessorError
from processors.features import EngineConfig, FeatureEngine, PartitionState

PARTITION = "\x00partition"  # the partition record's name, after the namespace
LAYOUT = 3  # bump whenever a record's or a kernel state's layout changes
_BAR_INT = ("start", "open_ts", "open_seq", "close_ts", "close_seq", "trades")
_BAR_FLOAT = ("open", "high", "low", "close", "volume", "pv")


class StateError(ProcessorError):
    """A changelog that cannot be restored into this processor (other configuration, unknown version)."""


def state_key(namespace: str, name: str) -> bytes:
    """Records are namespaced (by consumer group): groups sharing a changelog topic never read each other's.
    The namespace's length leads, so no namespace is a prefix of another's keys ("g" and "g/x" included)."""
    return f"{len(namespace)}:{namespace}/{name}".encode()


def fingerprint(config: EngineConfig) -> str:
    text = repr((LAYOUT, config.intervals, config.lateness_ms, config.features))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_symbols(engine: FeatureEngine, state: PartitionState, symbols: Iterable[str], namespace: str,
                   at: int | None = None) -> list[tuple[bytes, bytes]]:
    """(key, value) changelog records for these symbols (the work is proportional to how many); `at`: the
    input offset this state stands at."""
    fs = state.features
    if fs is None:
        raise StateError("no indicator state")
    symbols = list(symbols)
    wanted = [(sym, iv, state.slots[(sym, iv)]) for sym in symbols for iv in engine.config.intervals
              if (sym, iv) in state.slots]
    if any(slot >= fs.slots for _, _, slot in wanted):
        raise StateError("a series has no indicator state row")
    idx = np.array([slot for _, _, slot in wanted], np.int64)
    counts = np.ascontiguousarray(np.stack([c[idx] for c in fs.counts], axis=1), "<i8")
    vals = np.ascontiguousarray(np.concatenate([v[idx] for v in fs.vals], axis=1), "<f8")
    # One bytes buffer per table, cut per series by plain bytes slicing: a few numpy calls per batch instead
    # of several per series (measured: this function was a fifth of the processor's time at 10k ticks/s).
    counts_buf, counts_w = counts.tobytes(), counts.shape[1] * 8
    vals_buf, vals_w = vals.tobytes(), vals.shape[1] * 8
    tables = {}
    for iv in engine.config.intervals:
        b = state.bars[iv]  # rows sorted by (slot, start): a slot's open bars are one contiguous run
        ints = np.ascontiguousarray(np.stack([getattr(b, f) for f in _BAR_INT], axis=1), "<i8")
        floats = np.ascontiguousarray(np.stack([getattr(b, f) for f in _BAR_FLOAT], axis=1), "<f8")
        rows_iv = [row for row, (_, wiv, _) in enumerate(wanted) if wiv == iv]
        slots_iv = idx[rows_iv]
        los = np.searchsorted(b.key, slots_iv, "left").tolist()
        his = np.searchsorted(b.key, slots_iv, "right").tolist()
        tables[iv] = (ints.tobytes(), ints.shape[1] * 8, floats.tobytes(), floats.shape[1] * 8,
                      dict(zip(rows_iv, zip(los, his, strict=True), strict=True)))
    series: dict[str, dict[str, dict[str, object]]] = {sym: {} for sym in symbols}
    for row, (sym, iv, _slot) in enumerate(wanted):
        ints_buf, ints_w, floats_buf, floats_w, bounds = tables[iv]
        lo, hi = bounds[row]
        series[sym][iv] = {"n": hi - lo, "ints": ints_buf[lo * ints_w:hi * ints_w],
                           "floats": floats_buf[lo * floats_w:hi * floats_w],
                           "counts": counts_buf[row * counts_w:(row + 1) * counts_w],
                           "vals": vals_buf[row * vals_w:(row + 1) * vals_w]}
    return [(state_key(namespace, sym), msgspec.msgpack.encode({"v": LAYOUT, "at": at, "series": series[sym]}))
            for sym in symbols]


def encode_partition(engine: FeatureEngine, state: PartitionState, namespace: str,
                     input_offset: int | None = None) -> tuple[bytes, bytes]:
    """The partition's record; `input_offset` is the input offset committed in the same transaction, so a
    restore can tell whether it read the changelog as far as the committed offsets say it must."""
    record = {
        "v": LAYOUT,
        "offset": input_offset,
        "config": fingerprint(engine.config),
        "max_ts": {iv: int(state.bars[iv].max_ts) for iv in engine.config.intervals},
        "next_seq": {iv: int(state.bars[iv].next_seq) for iv in engine.config.intervals},
    }
    return state_key(namespace, PARTITION), msgspec.msgpack.encode(record)


def recorded_offset(records: dict[bytes, bytes | None], namespace: str) -> int | None:
    """The input offset the newest partition record was committed with (None: no record, or one written
    before records carried it)."""
    part = records.get(state_key(namespace, PARTITION))
    if part is None:
        return None
    offset = msgspec.msgpack.decode(part).get("offset")
    return int(offset) if offset is not None else None


def newest_symbol_offset(records: dict[bytes, bytes | None], namespace: str) -> int | None:
    """The latest input offset any of this namespace's symbol records stands at (None: none carries one)."""
    prefix = state_key(namespace, "")
    part_key = state_key(namespace, PARTITION)
    ats = [msgspec.msgpack.decode(v).get("at") for k, v in records.items()
           if v is not None and k.startswith(prefix) and k != part_key]
    return max((a for a in ats if a is not None), default=None)


def decode_state(engine: FeatureEngine, records: dict[bytes, bytes | None], namespace: str) -> PartitionState:
    """The partition state from its changelog (the newest record per key), this namespace's records only."""
    prefix = state_key(namespace, "")
    part_key = state_key(namespace, PARTITION)
    part = records.get(part_key)
    if part is None:
        return engine.empty_state()
    meta = msgspec.msgpack.decode(part)
    if meta.get("v") != LAYOUT:
        raise StateError(f"the changelog of group {namespace!r} has state layout {meta.get('v')}, this version "
                         f"reads layout {LAYOUT}: run it under a new features.group, which starts its own state")
    if meta["config"] != fingerprint(engine.config):
        raise StateError(f"the changelog of group {namespace!r} was written with other intervals, lateness or "
                         "features (or an older state layout): run the new configuration under a new "
                         "features.group, which starts its own state")
    empty = engine.feature_set.empty_state()
    widths = [v.shape[1] for v in empty.vals]
    offsets = np.cumsum([0, *widths]).tolist()
    slots: dict[tuple[str, str], int] = {}
    ints: dict[str, list[np.ndarray]] = {iv: [] for iv in engine.config.intervals}
    floats: dict[str, list[np.ndarray]] = {iv: [] for iv in engine.config.intervals}
    keys: dict[str, list[np.ndarray]] = {iv: [] for iv in engine.config.intervals}
    counts_rows: list[np.ndarray] = []
    vals_rows: list[np.ndarray] = []
    for key in sorted(k for k, v in records.items()
                      if k.startswith(prefix) and k != part_key and v is not None):
        value = records[key]
        assert value is not None
        rec = msgspec.msgpack.decode(value)
        if rec.get("v") != LAYOUT:
            raise StateError(f"changelog record version {rec.get('v')} of {key!r} is not supported")
        symbol = key[len(prefix):].decode()
        for iv, s in rec["series"].items():
            slot = slots.setdefault((symbol, iv), len(slots))
            n = s["n"]
            ints[iv].append(np.frombuffer(s["ints"], "<i8").reshape(n, len(_BAR_INT)))
            floats[iv].append(np.frombuffer(s["floats"], "<f8").reshape(n, len(_BAR_FLOAT)))
            keys[iv].append(np.full(n, slot, np.int64))
            counts_rows.append(np.frombuffer(s["counts"], "<i8"))
            vals_rows.append(np.frombuffer(s["vals"], "<f8"))
    if counts_rows:
        counts_all = np.stack(counts_rows).astype(np.int64)
        vals_all = np.stack(vals_rows).astype(np.float64)
    else:
        counts_all = np.zeros((0, len(widths)), np.int64)
        vals_all = np.zeros((0, offsets[-1]))
    features = FeatureState(
        counts=tuple(counts_all[:, g].copy() for g in range(len(widths))),
        vals=tuple(vals_all[:, offsets[g]:offsets[g + 1]].copy() for g in range(len(widths))),
    )
    bars = {iv: _bar_state(keys[iv], ints[iv], floats[iv], meta["max_ts"][iv], meta["next_seq"][iv])
            for iv in engine.config.intervals}
    names = [""] * len(slots)
    for (symbol, _iv), slot in slots.items():
        names[slot] = symbol
    return PartitionState(slots, tuple(names), bars, features)


def _bar_state(keys: list[np.ndarray], ints: list[np.ndarray], floats: list[np.ndarray], max_ts: int,
               next_seq: int) -> BarState:
    if not keys or sum(len(k) for k in keys) == 0:
        return dataclasses.replace(BarState.empty(), max_ts=max_ts, next_seq=next_seq)
    key = np.concatenate(keys)
    i = np.concatenate(ints).astype(np.int64)
    f = np.concatenate(floats).astype(np.float64)
    order = np.lexsort((i[:, 0], key))
    key, i, f = key[order], i[order], f[order]
    return BarState(key=key, start=i[:, 0].copy(), open_ts=i[:, 1].copy(), open_seq=i[:, 2].copy(),
                    close_ts=i[:, 3].copy(), close_seq=i[:, 4].copy(), open=f[:, 0].copy(), high=f[:, 1].copy(),
                    low=f[:, 2].copy(), close=f[:, 3].copy(), volume=f[:, 4].copy(), pv=f[:, 5].copy(),
                    trades=i[:, 5].copy(), max_ts=max_ts, next_seq=next_seq)

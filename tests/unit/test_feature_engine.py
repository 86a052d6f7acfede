"""The feature engine: any cut of a partition's ticks gives the same bars and features, and they are TA-Lib's."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.feature_state import decode_state, encode_partition, encode_symbols, recorded_offset
from processors.features import EngineConfig, FeatureEngine
from processors.synthetic import MarketSpec, TickGenerator
from schemas.records import Tick
from schemas.ticks import TickColumns


def run(engine: FeatureEngine, ticks: TickColumns, cuts: list[int]) -> dict[tuple[str, str, int], tuple[Any, ...]]:
    state = engine.empty_state()
    out: dict[tuple[str, str, int], tuple[Any, ...]] = {}
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(ticks)}), len(ticks)]
    for lo, hi in pairwise(bounds):
        result, state = engine.process(state, ticks.take(np.arange(lo, hi)))
        for c in result.closed:
            for i in range(len(c)):
                key = (str(c.symbol[i]), c.interval, int(c.start[i]))
                assert key not in out, f"bar {key} published twice"
                out[key] = (c.open[i], c.high[i], c.low[i], c.close[i], c.volume[i], c.vwap[i], c.trades[i],
                            *(c.features[name][i] for name in engine.feature_set.names))
    return out


def same(a: dict[Any, tuple[Any, ...]], b: dict[Any, tuple[Any, ...]]) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(np.array(a[k], float), np.array(b[k], float), equal_nan=True) for k in a)


STREAM = TickGenerator(MarketSpec(symbols=6, seed=9, rate=150)).next_chunk(12_000)  # ~80 s of ticks


@settings(max_examples=25)
@given(st.lists(st.integers(1, len(STREAM) - 1), max_size=10))
def test_any_cut_gives_the_same_bars_and_features(cuts: list[int]) -> None:
    engine = FeatureEngine(EngineConfig(intervals=("1s", "5s")))
    assert same(run(engine, STREAM, cuts), run(engine, STREAM, []))


def test_features_of_the_engine_bars_are_talibs() -> None:
    engine = FeatureEngine(EngineConfig(intervals=("1s",)))
    out = run(engine, STREAM, [3000, 7000])
    for symbol in sorted({k[0] for k in out}):
        rows = [out[k] for k in sorted(k for k in out if k[0] == symbol)]
        close = np.array([r[3] for r in rows])
        names = engine.feature_set.names
        got = {name: np.array([r[7 + j] for r in rows]) for j, name in enumerate(names)}
        np.testing.assert_allclose(got["ema_12"], talib.EMA(close, 12), rtol=1e-9, equal_nan=True)
        np.testing.assert_allclose(got["rsi_14"], talib.RSI(close, 14), rtol=1e-9, equal_nan=True)
        high, low = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
        np.testing.assert_allclose(got["atr_14"], talib.ATR(high, low, close, 14), rtol=1e-9, equal_nan=True)


def test_late_ticks_are_reported_and_left_out() -> None:
    ticks = TickColumns.from_records([Tick("A", 1_700_000_001_000, 10.0, 1.0), Tick("A", 1_700_000_002_500, 11.0, 1.0),
                                      Tick("A", 1_700_000_000_500, 9.0, 1.0)])
    engine = FeatureEngine(EngineConfig(intervals=("1s", "1m")))
    result, _ = engine.process(engine.empty_state(), ticks)
    assert result.late.tolist() == [False, False, True]
    assert result.late_reason == ["late: 1s bar starting 1700000000000 closed at watermark 1700000002500"]
    one_s = result.closed[0]
    assert one_s.start.tolist() == [1_700_000_001_000] and one_s.close.tolist() == [10.0]


def test_state_written_to_the_changelog_and_read_back_continues_the_stream_exactly() -> None:
    """What a restore does: the changelog records of a cut state, decoded, give the same bars and features
    as the state kept in memory (every series' open bars, indicator rows and counts survive)."""
    engine = FeatureEngine(EngineConfig(intervals=("1s", "5s")))
    half = len(STREAM) // 2
    first, second = STREAM.take(np.arange(0, half)), STREAM.take(np.arange(half, len(STREAM)))
    _, state = engine.process(engine.empty_state(), first)
    records = dict(encode_symbols(engine, state, state.names, "ns"))
    records.update([encode_partition(engine, state, "ns", input_offset=half)])
    restored = decode_state(engine, records, "ns")
    assert recorded_offset(records, "ns") == half
    kept, _ = engine.process(state, second)
    again, _ = engine.process(restored, second)
    for a, b in zip(kept.closed, again.closed, strict=True):
        assert len(a) > 0 and list(a.symbol) == list(b.symbol) and np.array_equal(a.start, b.start)
        assert np.array_equal(a.close, b.close) and np.array_equal(a.volume, b.volume)
        for name, values in a.features.items():
            assert np.array_equal(values, b.features[name], equal_nan=True), name


def test_a_bar_closed_by_another_symbols_tick_is_in_the_changelog() -> None:
    """A's 1 s bar is closed by B's tick (the partition's watermark), in a batch without a tick of A: A's state
    moved all the same, so its record must be rewritten — else a restore reopens the closed bar and publishes it
    a second time."""
    t0 = 1_700_000_000_000
    engine = FeatureEngine(EngineConfig(intervals=("1s",)))
    batches = [[Tick("A", t0 + 100, 10.0, 1.0), Tick("B", t0 + 200, 20.0, 1.0)],
               [Tick("B", t0 + 1_100, 21.0, 1.0)],  # closes A's and B's bars of second 0
               [Tick("A", t0 + 2_100, 11.0, 1.0)]]
    state = engine.empty_state()
    log: dict[bytes, bytes | None] = {}  # the compacted changelog: newest record per key
    published = []
    for i, ticks in enumerate(batches):
        if i == 2:  # restart here: restore from the changelog
            state = decode_state(engine, log, "ns")
        out, state = engine.process(state, TickColumns.from_records(ticks))
        published += [(str(s), int(b)) for c in out.closed for s, b in zip(c.symbol, c.start, strict=True)]
        log.update(encode_symbols(engine, state, sorted(out.touched), "ns"))
        log.update([encode_partition(engine, state, "ns", input_offset=i)])
    assert sorted(published) == [("A", t0), ("B", t0), ("B", t0 + 1_000)]

"""Event-time bars: equal to an obvious tick-by-tick loop, and bit-for-bit the same however the stream is cut."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from gpu_kernels.bars import BarState, aggregate_bars


def reference_bars(ticks: list[tuple[int, int, float, float]], interval: int, lateness: int
                   ) -> tuple[dict[tuple[int, int], tuple[Any, ...]], list[int]]:
    """One tick at a time with a dict of open bars: the definition, written the slow way."""
    open_bars: dict[tuple[int, int], dict[str, Any]] = {}
    closed: dict[tuple[int, int], tuple[Any, ...]] = {}
    late: list[int] = []
    high_mark: int | None = None
    for i, (key, ts, price, size) in enumerate(ticks):
        start = (ts // interval) * interval
        if high_mark is not None and start + interval <= high_mark - lateness:
            late.append(i)
        else:
            bar = open_bars.get((key, start))
            if bar is None:
                open_bars[(key, start)] = {"o": (ts, i, price), "c": (ts, i, price), "h": price, "l": price,
                                           "v": size, "pv": price * size, "n": 1}
            else:
                bar["h"] = max(bar["h"], price)
                bar["l"] = min(bar["l"], price)
                bar["o"] = min(bar["o"], (ts, i, price))
                bar["c"] = max(bar["c"], (ts, i, price))
                bar["v"] += size
                bar["pv"] += price * size
                bar["n"] += 1
        high_mark = ts if high_mark is None else max(high_mark, ts)
        for k in [k for k in open_bars if k[1] + interval <= high_mark - lateness]:
            b = open_bars.pop(k)
            vwap = b["pv"] / b["v"] if b["v"] > 0 else float("nan")
            closed[k] = (b["o"][2], b["h"], b["l"], b["c"][2], b["v"], vwap, b["n"])
    return closed, late


def run_in_batches(ticks: list[tuple[int, int, float, float]], cuts: list[int], interval: int, lateness: int
                   ) -> tuple[dict[tuple[int, int], tuple[Any, ...]], list[int], BarState]:
    state = BarState.empty()
    closed: dict[tuple[int, int], tuple[Any, ...]] = {}
    late: list[int] = []
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(ticks)), len(ticks)]
    for lo, hi in pairwise(bounds):
        chunk = ticks[lo:hi]
        arr = np.array(chunk, dtype=object).reshape(-1, 4) if chunk else np.empty((0, 4), object)
        out = aggregate_bars(state, arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64),
                             arr[:, 2].astype(np.float64), arr[:, 3].astype(np.float64), interval, lateness)
        state = out.state
        b = out.bars
        for j in range(len(b)):
            k = (int(b.key[j]), int(b.start[j]))
            assert k not in closed, "a bar was emitted twice"
            closed[k] = (b.open[j], b.high[j], b.low[j], b.close[j], b.volume[j], b.vwap[j], int(b.trades[j]))
        late += [lo + int(i) for i in np.flatnonzero(out.late)]
    return closed, late, state


def same(a: dict[tuple[int, int], tuple[Any, ...]], b: dict[tuple[int, int], tuple[Any, ...]]) -> bool:
    """Bitwise equality (NaN vwap equals NaN)."""
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(np.array(a[k], float), np.array(b[k], float), equal_nan=True) for k in a)


tick = st.tuples(
    st.integers(0, 3),                                   # series key
    st.integers(1_700_000_000_000, 1_700_000_030_000),   # ts within 30 s: many bars, some gaps
    st.floats(0.01, 1e4, allow_nan=False),
    st.floats(0, 1e4, allow_nan=False),
)


@given(st.lists(tick, max_size=120), st.lists(st.integers(0, 120), max_size=6),
       st.sampled_from([1000, 5000, 60_000]), st.sampled_from([0, 0, 1500]))
def test_any_cut_gives_the_reference_bars(ticks: list[Any], cuts: list[int], interval: int, lateness: int) -> None:
    # Mostly in order with some disorder, like a real feed.
    want, want_late = reference_bars(ticks, interval, lateness)
    whole, whole_late, whole_state = run_in_batches(ticks, [], interval, lateness)
    cut, cut_late, cut_state = run_in_batches(ticks, cuts, interval, lateness)
    assert same(whole, want) and whole_late == want_late
    assert same(cut, whole) and cut_late == whole_late
    assert np.array_equal(cut_state.start, whole_state.start) and np.array_equal(cut_state.pv, whole_state.pv)


def test_late_tick_and_gap() -> None:
    ticks = [(0, 1000, 10.0, 1.0), (0, 1500, 11.0, 2.0), (1, 1700, 5.0, 3.0), (0, 2100, 12.0, 4.0),
             (0, 900, 9.0, 5.0), (0, 5200, 13.0, 1.0)]
    closed, late, state = run_in_batches(ticks, [3], 1000, 0)
    assert late == [4]  # its bar [0, 1000) closed when 2100 arrived
    assert closed[(0, 1000)] == (10.0, 11.0, 10.0, 11.0, 3.0, (10.0 + 22.0) / 3.0, 2)
    assert (0, 3000) not in closed and (0, 4000) not in closed  # no ticks, no bar
    assert closed[(0, 2000)][6] == 1 and list(state.start) == [5000]


def test_lateness_keeps_bars_open_and_orders_open_close_by_event_time() -> None:
    ticks = [(0, 1200, 10.0, 1.0), (0, 2100, 20.0, 1.0), (0, 1100, 9.0, 1.0), (0, 3600, 30.0, 1.0)]
    closed, late, _ = run_in_batches(ticks, [], 1000, 1500)
    assert late == []  # 1100 met watermark 2100 - 1500 = 600: its bar was still open
    assert closed[(0, 1000)][:4] == (9.0, 10.0, 9.0, 10.0)  # open = earliest by ts, not by arrival
    assert (0, 2000) not in closed  # the watermark 3600 - 1500 = 2100 has not reached its end, 3000

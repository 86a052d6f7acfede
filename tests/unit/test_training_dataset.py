"""Point-in-time datasets: a row at bar t never changes when data after its label window (t+h) changes, its features
never change when data after t changes, labels equal a slow per-symbol loop, and no training row's label window
reaches into the test rows (the purge), for holdout and walk-forward splits over panels with halts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.backtest_data import BarPanel
from processors.errors import InvalidCommand
from processors.training.dataset import build_dataset, point_in_time_rows, time_splits
from schemas.records import DataSource, Label, TrainCommand, Validation

FEATURES = ("logret_1", "sma_3", "rsi_3", "atr_2", "obv")
T0 = 1_800_000_000_000
STEP = 60_000


def command(horizon: int, *, kind: str = "direction", dead_zone: float = 0.0,
            validation: Validation | None = None, universe: tuple[str, ...] = ("A", "B", "C")) -> TrainCommand:
    return TrainCommand("job", "m", FEATURES, Label(kind, horizon, dead_zone), universe,  # type: ignore[arg-type]
                        "2027-01-01", "2027-01-02", DataSource("synthetic", seed=1), interval="1m",
                        validation=validation or Validation())


def panel_from(close: np.ndarray, volume: np.ndarray | None = None) -> BarPanel:
    """Bars around the closes (NaN close = halted bar), on a one-minute grid."""
    n, s = close.shape
    open_ = np.vstack((close[:1], close[:-1])) * 1.001
    open_ = np.where(np.isnan(close), np.nan, np.where(np.isnan(open_), close, open_))
    high, low = np.fmax(open_, close) * 1.002, np.fmin(open_, close) * 0.998
    vol = np.where(np.isnan(close), np.nan, 1000.0 if volume is None else volume)
    return BarPanel(T0 + STEP * np.arange(n, dtype=np.int64), open_, high, low, close, vol,
                    tuple("ABCDEFG"[:s]))


def random_closes(rng: np.random.Generator, n: int, s: int, halts: float = 0.05) -> np.ndarray:
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (n, s)), axis=0))
    close = np.round(close, 2)  # cents: some bars do not move, which the dead zone drops
    close[rng.random((n, s)) < halts] = np.nan
    return close


def row_of(data, symbol: str, ts: int) -> int | None:  # type: ignore[no-untyped-def]
    hit = np.flatnonzero((data.symbol == symbol) & (data.ts == ts))
    return int(hit[0]) if len(hit) else None


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), horizon=st.integers(1, 4), pick=st.floats(0, 1), shock=st.floats(0.5, 2.0),
       halt=st.floats(0, 0.5), dead_zone=st.sampled_from([0.0, 0.002]))
def test_data_after_the_label_window_changes_no_row(seed: int, horizon: int, pick: float, shock: float,
                                                    halt: float, dead_zone: float) -> None:
    rng = np.random.default_rng(seed)
    close = random_closes(rng, 40, 3)
    cmd = command(horizon, dead_zone=dead_zone)
    before = point_in_time_rows(cmd, panel_from(close))
    if len(before) == 0:
        return
    i = min(int(pick * len(before)), len(before) - 1)
    symbol, ts, end = before.symbol[i], int(before.ts[i]), int(before.label_end[i])

    # Everything after the label window's last bar, every symbol: other prices, volumes, and new halts.
    later = ((T0 + STEP * np.arange(40)) > end)[:, None] & np.ones((1, 3), bool)
    changed = close.copy()
    changed[later] *= shock
    changed[later & (rng.random(close.shape) < halt)] = np.nan
    volume = np.where(later, 5000.0, 1000.0)
    after = point_in_time_rows(cmd, panel_from(changed, volume))
    j = row_of(after, symbol, ts)
    assert j is not None
    np.testing.assert_array_equal(after.X[j], before.X[i])
    assert (after.y[j], after.forward_return[j], after.label_end[j]) == (before.y[i], before.forward_return[i], end)

    # Everything after the row's own bar: its features stay (they are known at t); only the label may move.
    changed = close.copy()
    changed[(T0 + STEP * np.arange(40)) > ts, :] *= shock
    moved = point_in_time_rows(command(horizon), panel_from(changed))
    k = row_of(moved, symbol, ts)
    if k is not None:
        np.testing.assert_array_equal(moved.X[k], before.X[i])


def reference_labels(close: np.ndarray, horizon: int, dead_zone: float) -> dict[tuple[str, int], tuple[float, int]]:
    """A slow loop: per symbol, its bars in order; the log return to the h-th next bar that exists."""
    out = {}
    for s, symbol in enumerate("ABC"):
        bars = [(T0 + STEP * t, close[t, s]) for t in range(close.shape[0]) if not math.isnan(close[t, s])]
        for k in range(len(bars) - horizon):
            r = math.log(bars[k + horizon][1] / bars[k][1])
            if abs(r) > dead_zone:
                out[(symbol, bars[k][0])] = (r, bars[k + horizon][0])
    return out


@pytest.mark.parametrize("horizon,dead_zone", [(1, 0.0), (3, 0.0), (5, 0.004)])
def test_labels_and_drops_match_a_slow_loop(horizon: int, dead_zone: float) -> None:
    close = random_closes(np.random.default_rng(horizon), 300, 3)
    data = point_in_time_rows(command(horizon, dead_zone=dead_zone), panel_from(close))
    want = reference_labels(close, horizon, dead_zone)
    complete = {(s, int(t)) for s, t in zip(data.symbol, data.ts, strict=True)}
    assert complete <= set(want)
    for i, key in enumerate(zip(data.symbol, data.ts.tolist(), strict=True)):
        r, end = want[key]
        assert data.forward_return[i] == pytest.approx(r, rel=1e-12, abs=1e-15)
        assert data.label_end[i] == end and data.y[i] == (1 if r > 0 else 0)
    # the rows the reference keeps and we do not: only a symbol's first bars, while rsi_3 and sma_3 warm up
    for symbol, ts in set(want) - complete:
        s = "ABC".index(symbol)
        assert int((~np.isnan(close[: (ts - T0) // STEP, s])).sum()) < 4
    assert len(data) + sum(data.dropped.values()) == int((~np.isnan(close)).sum())
    assert bool((np.diff(data.ts) >= 0).all()) and not np.isnan(data.X).any()


def test_forward_return_labels_for_regressors() -> None:
    close = random_closes(np.random.default_rng(9), 120, 3)
    data = point_in_time_rows(command(2, kind="forward_return"), panel_from(close))
    np.testing.assert_array_equal(data.y, data.forward_return)
    assert data.task == "regressor" and data.dropped["dead_zone"] == 0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), horizon=st.integers(1, 6), fraction=st.floats(0.05, 0.5),
       folds=st.integers(1, 4), walk=st.booleans())
def test_no_training_label_window_reaches_the_test_rows(seed: int, horizon: int, fraction: float, folds: int,
                                                       walk: bool) -> None:
    close = random_closes(np.random.default_rng(seed), 120, 3, halts=0.1)
    validation = Validation("walk_forward", fraction, folds) if walk else Validation("holdout", fraction)
    try:
        data = build_dataset(command(horizon, validation=validation), panel_from(close))
    except InvalidCommand:
        return  # too few bar times for that many folds: refused, never a leaky split
    assert len(data.splits) == (folds if walk else 1)
    for split in data.splits:
        first_test = data.ts[split.test].min()
        assert data.label_end[split.train].max() < first_test  # the purge
        assert data.ts[split.train].max() < first_test and not set(split.train) & set(split.test)
        # and nothing more than the purge is held back from training
        eligible = (data.ts < first_test) & (data.label_end < first_test)
        assert set(np.flatnonzero(eligible)) == set(split.train.tolist())
        assert split.purged == int(((data.ts < first_test) & ~eligible).sum())
    tests = [data.ts[s.test] for s in data.splits]
    assert all(a.max() < b.min() for a, b in itertools.pairwise(tests))  # folds follow in time


def test_a_holdout_purges_h_bars_on_a_regular_grid() -> None:
    ts = np.repeat(np.arange(100, dtype=np.int64), 2)
    (split,) = time_splits(ts, ts + 5, Validation("holdout", 0.2))
    assert ts[split.test].min() == 80 and ts[split.train].max() == 74 and split.purged == 2 * 5


def test_too_little_data_is_refused_with_a_reason() -> None:
    close = random_closes(np.random.default_rng(3), 12, 1)
    with pytest.raises(InvalidCommand, match="too few rows"):
        build_dataset(command(3, universe=("A",), validation=Validation("walk_forward", 0.2, 4)), panel_from(close))

"""Point-in-time training sets: features known at a bar, a label from the bars after it, and purged time splits.

A row is one bar a symbol has (halted bars are not bars), with:
- the requested features of that bar, from the same causal kernels as the stream (`feature_table`), so a
  row at bar t is computed from bars up to and including t only;
- the forward log return r = ln(close[k+h] / close[k]) over the symbol's next h bars (k is the row's bar
  in the symbol's own sequence; a halt makes the window longer in time, never shorter in bars);
- `direction` labels: 1 (up) when r > dead_zone, 0 (down) when r < -dead_zone; rows with |r| <= dead_zone
  are dropped (a flat move is neither, and a third class would make a different model). `forward_return`
  labels: r itself, for regressors.

Dropped, and counted by reason in this order: a feature still warming up (null), no full label window left in
the period, inside the dead zone.

Splits are by time, never shuffled. Holdout: the last `test_fraction` of the rows' distinct bar times are the
test rows; walk-forward: that same stretch cut into `folds` consecutive blocks, each tested by a model trained
on everything before it. The purge: a training row must have its whole label window (its h-th next bar)
before the first test bar, so the last h bars before a test block (more around a halt) are left out of its
training rows, and no training label sees a price the test rows are scored on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from processors.backtest_data import BarPanel
from processors.errors import InvalidCommand
from processors.feature_jobs import feature_set, feature_table
from schemas.records import Label, TrainCommand, Validation

DROP_REASONS = ("null_features", "no_label_window", "dead_zone")


@dataclass(frozen=True)
class Split:
    """Row indices of one fold (each in time order), and how many rows the purge took out of its training set."""

    train: np.ndarray
    test: np.ndarray
    purged: int


@dataclass(frozen=True)
class Dataset:
    """Rows in time order (then universe order within a bar time)."""

    features: tuple[str, ...]
    label: Label
    X: np.ndarray  # (rows, features) float64, no NaN
    y: np.ndarray  # direction: int64 0 (down) / 1 (up); forward_return: float64, the log return
    forward_return: np.ndarray  # (rows,) float64 log return over the label window
    symbol: np.ndarray  # (rows,) object
    ts: np.ndarray  # (rows,) int64 the row's bar (its features are known when that bar closes)
    label_end: np.ndarray  # (rows,) int64 the last bar of the label window
    dropped: dict[str, int]
    splits: tuple[Split, ...]

    @property
    def task(self) -> str:
        return "classifier" if self.label.kind == "direction" else "regressor"

    def __len__(self) -> int:
        return len(self.ts)


def build_dataset(cmd: TrainCommand, panel: BarPanel) -> Dataset:
    """The command's rows and splits from `panel`; InvalidCommand when too few rows are left to train and test."""
    data = point_in_time_rows(cmd, panel)
    return replace(data, splits=time_splits(data.ts, data.label_end, cmd.validation))


def point_in_time_rows(cmd: TrainCommand, panel: BarPanel) -> Dataset:
    """The rows alone (no splits yet)."""
    names = feature_set(cmd.features).names
    horizon = cmd.label.horizon
    table = feature_table(panel, names)
    symbol = np.asarray(table.column("symbol").to_pylist(), dtype=object)
    ts = table.column("ts").to_numpy()
    close = table.column("close").to_numpy()
    n = len(ts)
    X = np.empty((n, len(names)))
    for j, name in enumerate(names):
        X[:, j] = table.column(name).to_numpy(zero_copy_only=False)  # null -> NaN
    # Rows are grouped by symbol in time order, so "h bars later for the same symbol" is "h rows later" when
    # the row h later still belongs to the same symbol.
    later = np.arange(n) + horizon
    has_window = later < n
    has_window[has_window] = symbol[later[has_window]] == symbol[has_window]
    end = np.where(has_window, later, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = np.where(has_window, np.log(close[end] / close), np.nan)
    label_end = np.where(has_window, ts[end], -1)

    complete = ~np.isnan(X).any(axis=1)
    keep = complete & has_window
    dropped = {"null_features": int((~complete).sum()), "no_label_window": int((complete & ~has_window).sum())}
    if cmd.label.kind == "direction":
        outside = np.abs(forward) > cmd.label.dead_zone
        dropped["dead_zone"] = int((keep & ~outside).sum())
        keep &= outside
    else:
        dropped["dead_zone"] = 0

    universe_rank = {s: i for i, s in enumerate(panel.symbols)}
    rank = np.fromiter((universe_rank[s] for s in symbol), np.int64, count=n)
    rows = np.flatnonzero(keep)
    rows = rows[np.lexsort((rank[rows], ts[rows]))]
    forward = forward[rows]
    y = (forward > 0).astype(np.int64) if cmd.label.kind == "direction" else forward.copy()
    return Dataset(tuple(names), cmd.label, np.ascontiguousarray(X[rows]), y, forward, symbol[rows], ts[rows],
                   label_end[rows], dropped, ())


def time_splits(ts: np.ndarray, label_end: np.ndarray, validation: Validation) -> tuple[Split, ...]:
    """Holdout or walk-forward folds over rows in time order, purged (see the module docstring)."""
    times = np.unique(ts)
    folds = validation.folds if validation.kind == "walk_forward" else 1
    n_test = round(len(times) * validation.test_fraction)
    if len(times) < 2 or n_test < folds or n_test >= len(times):
        raise InvalidCommand(f"too few rows to train and test: {len(ts)} rows over {len(times)} bar times "
                             f"(test_fraction {validation.test_fraction}, {folds} fold(s)); "
                             "widen the period or shorten the feature windows and the horizon")
    splits = []
    for block in np.array_split(times[-n_test:], folds):
        first, last = block[0], block[-1]
        before = ts < first
        train = np.flatnonzero(before & (label_end < first))
        test = np.flatnonzero((ts >= first) & (ts <= last))
        if len(train) == 0:
            raise InvalidCommand("no training rows are left before the first test bar once the purge has "
                                 "removed those whose label window reaches into it; widen the period")
        splits.append(Split(train, test, int(before.sum()) - len(train)))
    return tuple(splits)

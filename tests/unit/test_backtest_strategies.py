"""Built-in strategies give the positions their definitions say, checked by per-bar state machines over TA-Lib."""

from __future__ import annotations

import re

import numpy as np
import pytest
import talib

from gpu_kernels import indicators as ta
from gpu_kernels.backtest import bar_sequences, forward_fill
from processors.errors import InvalidCommand
from processors.indicator_bank import Indicators
from processors.strategies import STRATEGIES, ParamSpec, get_strategy, register_strategy


def bars(seed: int, rows: int = 400, symbols: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = np.round(40 * np.exp(np.cumsum(rng.normal(0, 0.02, (rows, symbols)), axis=0)), 2)
    spread = np.abs(rng.normal(0, 0.01, (rows, symbols))) * close
    return {"open": close, "high": close + spread, "low": close - spread, "close": close,
            "volume": np.ones((rows, symbols))}


def positions(strategy: str, panel: dict[str, np.ndarray], params: dict[str, object], long_short: bool) -> np.ndarray:
    """The engine's held positions (symbols × bars) for one parameter set: targets, NaN kept, shorts clipped."""
    seq = bar_sequences(np.ones(panel["close"].shape, dtype=bool))
    ind = Indicators(panel, seq, np)
    target = np.broadcast_to(get_strategy(strategy).signal(ind, {k: np.array([v]) for k, v in params.items()}),
                             (1, *seq.take.shape)).astype(np.float64)
    held = forward_fill(np.sign(target) if long_short else np.maximum(np.sign(target), 0), 0.0)
    return held[0]


def machine(long_in: np.ndarray, long_out: np.ndarray, short_in: np.ndarray, short_out: np.ndarray,
            long_short: bool) -> np.ndarray:
    """Bar by bar: enter on an entry, leave a side on that side's exit, hold otherwise."""
    pos, out = 0, []
    for li, lo, si, so in zip(long_in, long_out, short_in, short_out, strict=True):
        if li:
            pos = 1
        elif si:
            pos = -1 if long_short else 0
        elif (pos == 1 and lo) or (pos == -1 and so):
            pos = 0
        out.append(pos)
    return np.array(out, dtype=np.float64)


@pytest.mark.parametrize("ma", ["sma", "ema"])
@pytest.mark.parametrize("long_short", [False, True])
def test_trend_following(ma: str, long_short: bool) -> None:
    panel = bars(1)
    got = positions("trend_following", panel, {"fast": 7, "slow": 25, "ma": ma}, long_short)
    average = talib.SMA if ma == "sma" else talib.EMA
    for j in range(3):
        fast, slow = average(panel["close"][:, j], 7), average(panel["close"][:, j], 25)
        want = np.where(fast > slow, 1.0, np.where((fast < slow) & long_short, -1.0, 0.0))
        assert np.array_equal(got[j], want)
        assert not got[j][np.isnan(slow)].any()  # flat until both averages exist


@pytest.mark.parametrize("long_short", [False, True])
def test_breakout(long_short: bool) -> None:
    panel = bars(2)
    got = positions("breakout", panel, {"window": 20, "exit_window": 8}, long_short)
    for j in range(3):
        c, h, lo = panel["close"][:, j], panel["high"][:, j], panel["low"][:, j]

        def prev(x: np.ndarray) -> np.ndarray:
            return np.r_[np.nan, x[:-1]]

        up_in, dn_in = prev(talib.MAX(h, 20)), prev(talib.MIN(lo, 20))
        up_out, dn_out = prev(talib.MAX(h, 8)), prev(talib.MIN(lo, 8))
        want = machine(c > up_in, c < dn_out, c < dn_in, c > up_out, long_short)
        assert np.array_equal(got[j], want)
        assert (np.diff(want) != 0).sum() > 4


@pytest.mark.parametrize("indicator", ["bollinger", "rsi"])
@pytest.mark.parametrize("long_short", [False, True])
def test_mean_reversion(indicator: str, long_short: bool) -> None:
    panel = bars(3)
    params = {"indicator": indicator, "window": 14, "k": 1.5, "lower": 35.0, "upper": 65.0, "exit": 50.0}
    got = positions("mean_reversion", panel, params, long_short)
    for j in range(3):
        c = panel["close"][:, j]
        if indicator == "bollinger":
            x, (hi, mid, lo) = c, talib.BBANDS(c, 14, 1.5, 1.5)
        else:
            x, lo, hi, mid = talib.RSI(c, 14), 35.0, 65.0, 50.0
        want = machine(x < lo, x >= mid, x > hi, x <= mid, long_short)
        assert np.array_equal(got[j], want)
        assert (np.diff(want) != 0).sum() > 4


def test_a_grid_over_both_mean_reversion_indicators_picks_per_set() -> None:
    panel = bars(4)
    seq = bar_sequences(np.ones(panel["close"].shape, dtype=bool))
    ind = Indicators(panel, seq, np)
    strategy = get_strategy("mean_reversion")
    sets = strategy.param_sets({"indicator": ["rsi", "bollinger"], "window": [10, 20]})
    grid = {k: np.array([s[k] for s in sets]) for k in sets[0]}
    together = strategy.signal(ind, grid)
    for i, s in enumerate(sets):
        alone = strategy.signal(ind, {k: np.array([v]) for k, v in s.items()})
        assert np.array_equal(np.isnan(together[i]), np.isnan(alone[0]))
        assert np.array_equal(np.nan_to_num(together[i], nan=9), np.nan_to_num(alone[0], nan=9))


@pytest.mark.parametrize("n", [2, 5, 30])
def test_highest_and_lowest_kernels_match_talib_in_any_batching(n: int) -> None:
    x = np.round(np.random.default_rng(n).normal(0, 1, 700).cumsum(), 1)  # ties happen
    for kernel, reference in ((ta.highest, talib.MAX), (ta.lowest, talib.MIN)):
        out = np.empty(700)
        counts, vals = np.zeros(1, np.int64), np.zeros((1, 2 + n))
        for lo, hi in ((0, 1), (1, 250), (250, 251), (251, 700)):
            kernel(np.array([0]), np.array([lo]), np.array([hi]), x, n, counts, vals, out)
        want = reference(x, n)
        assert np.array_equal(np.isnan(out), np.isnan(want))
        assert np.array_equal(out[n - 1 :], want[n - 1 :])


def test_parameter_rules() -> None:
    tf = get_strategy("trend_following")
    assert tf.param_sets({}) == [{"fast": 10, "slow": 30, "ma": "sma"}]
    assert len(tf.param_sets({"fast": [5, 10, 50], "slow": [20, 40]})) == 4  # 50/20 and 50/40 dropped
    assert tf.param_sets({"fast": 20.0})[0]["fast"] == 20
    for params, message in [
        ({"fast": 40}, "fast (40) must be below slow (30)"),
        ({"fast": [40, 50]}, "no parameter set of the grid is valid"),
        ({"fsat": 3}, "has no parameter 'fsat'"),
        ({"fast": 0}, "below its minimum"),
        ({"fast": 2.5}, "not a whole number"),
        ({"fast": "ten"}, "not a number"),
        ({"fast": True}, "not a number"),
        ({"ma": "wma"}, "not one of sma, ema"),
        ({"fast": []}, "an empty list"),
        ({"fast": list(range(1, 201)), "slow": list(range(2, 202))}, "at most 20,000"),
    ]:
        with pytest.raises(InvalidCommand, match=re.escape(message)):
            tf.param_sets(params)


def test_a_user_strategy_registers_without_touching_the_engine() -> None:
    if "test_above_average" not in STRATEGIES:
        @register_strategy("test_above_average", params=[ParamSpec.integer("window", 50, 2, 1000)])
        def above_average(ind: Indicators, p: dict[str, np.ndarray]) -> object:
            return ind.close > ind.get("sma", p["window"])

    panel = bars(5)
    got = positions("test_above_average", panel, {"window": 10}, False)
    sma = talib.SMA(panel["close"][:, 0], 10)
    assert np.array_equal(got[0], (panel["close"][:, 0] > sma).astype(float))
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("trend_following")(lambda ind, p: None)

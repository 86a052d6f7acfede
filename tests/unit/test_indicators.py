"""Indicators equal the TA-Lib package (1e-9 relative) over many symbols, and are split-invariant bit for bit."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest
import talib
from hypothesis import given
from hypothesis import strategies as st

from gpu_kernels.features import DEFAULT_FEATURES, FeatureError, FeatureSet


def market(seed: int, n: int) -> dict[str, np.ndarray]:
    """A realistic bar series: GBM closes, OHLC around them, integer volumes, flat stretches (no trades)."""
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.standard_normal(n) * rng.uniform(0.001, 0.03)))
    close = np.round(close, 2)
    flat = rng.random(n) < 0.05  # a bar whose price did not move (thin trading, or a gap filled flat)
    for i in np.flatnonzero(flat)[1:]:
        close[i] = close[i - 1]
    spread = np.abs(rng.standard_normal(n)) * close * 0.004
    high = np.round(close + spread, 2)
    low = np.round(np.maximum(close - spread * rng.random(n), 0.01), 2)
    volume = np.round(np.exp(rng.normal(7, 1.5, n)))
    return {"high": high, "low": low, "close": close, "volume": volume}


def talib_features(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    c, h, lo, v = m["close"], m["high"], m["low"], m["volume"]
    logret = np.r_[np.nan, np.log(c[1:] / c[:-1])]
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    upper, middle, lower = talib.BBANDS(c, 20, 2, 2, talib.MA_Type.SMA)
    return {
        "sma_20": talib.SMA(c, 20), "ema_12": talib.EMA(c, 12), "ema_26": talib.EMA(c, 26), "rsi_14": talib.RSI(c, 14),
        "macd_12_26_9": macd, "macd_signal_12_26_9": signal, "macd_hist_12_26_9": hist,
        "bb_upper_20_2": upper, "bb_middle_20_2": middle, "bb_lower_20_2": lower,
        "atr_14": talib.ATR(h, lo, c, 14), "obv": talib.OBV(c, v), "logret_1": logret,
        "vol_20": talib.STDDEV(logret, 20, 1),
    }


def assert_matches(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{name}: warm-up differs from TA-Lib"
    ok = ~np.isnan(want)
    # Relative to the series' scale: MACD and its histogram cross zero, where a pointwise ratio means nothing.
    scale = max(float(np.max(np.abs(want[ok]))), 1e-300) if ok.any() else 1.0
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-9 * scale, err_msg=name)


def test_many_symbols_in_one_batch_match_talib() -> None:
    symbols = [market(seed, n) for seed, n in enumerate([2500, 40, 3000, 1, 35, 800, 2000, 26])]
    cols = {k: np.concatenate([m[k] for m in symbols]) for k in ("high", "low", "close", "volume")}
    lengths = [len(m["close"]) for m in symbols]
    hi = np.cumsum(lengths)
    lo = hi - lengths
    fs = FeatureSet()
    out, state = fs.compute(fs.empty_state(), np.arange(len(symbols)), lo, hi, **cols)
    for i, m in enumerate(symbols):
        want = talib_features(m)
        for name in DEFAULT_FEATURES:
            assert_matches(f"{name} (symbol {i})", out[name][lo[i]:hi[i]], want[name])
    assert state.slots == len(symbols)


@pytest.mark.parametrize("seed", range(12))
def test_long_series_match_talib(seed: int) -> None:
    m = market(100 + seed, 5000)
    fs = FeatureSet()
    out, _ = fs.compute(fs.empty_state(), [0], [0], [5000], **m)
    want = talib_features(m)
    for name in DEFAULT_FEATURES:
        assert_matches(name, out[name], want[name])


def test_other_periods_match_talib() -> None:
    m = market(7, 1500)
    c = m["close"]
    fs = FeatureSet(["sma_5", "ema_50", "rsi_2", "macd_5_35_5", "macd_signal_5_35_5", "bb_upper_10_1.5", "atr_1",
                     "vol_5"])
    out, _ = fs.compute(fs.empty_state(), [0], [0], [len(c)], **m)
    logret = np.r_[np.nan, np.log(c[1:] / c[:-1])]
    assert_matches("sma_5", out["sma_5"], talib.SMA(c, 5))
    assert_matches("ema_50", out["ema_50"], talib.EMA(c, 50))
    assert_matches("rsi_2", out["rsi_2"], talib.RSI(c, 2))
    macd, signal, _ = talib.MACD(c, 5, 35, 5)
    assert_matches("macd_5_35_5", out["macd_5_35_5"], macd)
    assert_matches("macd_signal_5_35_5", out["macd_signal_5_35_5"], signal)
    assert_matches("bb_upper_10_1.5", out["bb_upper_10_1.5"], talib.BBANDS(c, 10, 1.5, 1.5, talib.MA_Type.SMA)[0])
    assert_matches("atr_1", out["atr_1"][1:], talib.ATR(m["high"], m["low"], c, 1)[1:])
    assert_matches("vol_5", out["vol_5"], talib.STDDEV(logret, 5, 1))


def test_flat_prices_give_talib_zeroes() -> None:
    c = np.full(60, 10.0)
    c[40:] += np.arange(20) * 0.01
    m = {"high": c + 0.01, "low": c - 0.01, "close": c, "volume": np.ones(60)}
    fs = FeatureSet(["rsi_14", "vol_20", "bb_upper_20_2"])
    out, _ = fs.compute(fs.empty_state(), [0], [0], [60], **m)
    assert_matches("rsi_14", out["rsi_14"], talib.RSI(c, 14))
    assert_matches("vol_20", out["vol_20"], talib.STDDEV(np.r_[np.nan, np.log(c[1:] / c[:-1])], 20, 1))
    assert_matches("bb_upper_20_2", out["bb_upper_20_2"], talib.BBANDS(c, 20, 2, 2, talib.MA_Type.SMA)[0])


@given(st.integers(0, 10_000), st.lists(st.integers(1, 299), max_size=8), st.integers(1, 4),
       st.randoms(use_true_random=False))
def test_any_cut_and_interleaving_gives_the_same_bits(seed: int, cuts: list[int], symbols: int, rnd: Any) -> None:
    series = [market(seed + s, 300) for s in range(symbols)]
    fs = FeatureSet()
    whole: list[dict[str, np.ndarray]] = []
    state = fs.empty_state()
    for s, m in enumerate(series):
        out, state = fs.compute(state, [s], [0], [300], **m)
        whole.append(out)
    # The same bars cut at random points; inside each micro-batch the symbols come in a random order.
    bounds = [0, *sorted(set(cuts)), 300]
    state = fs.empty_state()
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in series]
    for lo, hi in pairwise(bounds):
        order = list(range(symbols))
        rnd.shuffle(order)
        batch = {k: np.concatenate([series[s][k][lo:hi] for s in order]) for k in ("high", "low", "close", "volume")}
        width = hi - lo
        seg_lo = np.arange(symbols) * width
        out, state = fs.compute(state, np.array(order), seg_lo, seg_lo + width, **batch)
        for pos, s in enumerate(order):
            parts[s].append({k: v[pos * width:(pos + 1) * width] for k, v in out.items()})
    for s in range(symbols):
        for name in DEFAULT_FEATURES:
            joined = np.concatenate([p[name] for p in parts[s]])
            assert np.array_equal(joined, whole[s][name], equal_nan=True), name


def test_state_is_not_changed_in_place() -> None:
    fs = FeatureSet()
    m = market(1, 50)
    state = fs.empty_state(1)
    fs.compute(state, [0], [0], [50], **m)
    assert all(int(c.sum()) == 0 for c in state.counts)


@pytest.mark.parametrize("name", ["sma_0", "macd_26_12_9", "bb_upper_1_2", "kama_10", "logret_2", "rsi_1"])
def test_bad_feature_names_are_refused(name: str) -> None:
    with pytest.raises(FeatureError):
        FeatureSet([name])


@pytest.mark.parametrize("kernel", ["ema", "rsi", "atr", "obv", "sma", "bbands", "logret_std"])
def test_one_series_in_two_segments_of_one_call_continues_itself(kernel: str) -> None:
    """The recursive kernels step two segments side by side when they belong to different series; two segments
    of the same series in one call must still run one after the other."""
    from gpu_kernels import indicators as ind

    m = market(11, 300)
    args = {"ema": (m["close"], 9), "rsi": (m["close"], 14), "atr": (m["high"], m["low"], m["close"], 14),
            "obv": (m["close"], m["volume"]), "sma": (m["close"], 9), "bbands": (m["close"], 9, 2.0),
            "logret_std": (m["close"], 9)}[kernel]
    outs = []
    for slots, lo, hi in (([0], [0], [300]), ([0, 0, 1], [0, 100, 250], [100, 250, 300])):
        counts, vals = np.zeros(2, np.int64), np.zeros((2, 40))
        lanes = 2 if kernel == "logret_std" else 1
        out = [np.empty((300, 3))] if kernel == "bbands" else [np.empty(300) for _ in range(lanes)]
        getattr(ind, kernel)(np.array(slots), np.array(lo), np.array(hi), *args, counts, vals, *out)
        outs.append((out[-1], counts))
    whole, split = outs
    np.testing.assert_array_equal(split[0][:250], whole[0][:250])
    assert split[1][0] == 250 and split[1][1] == 50


@pytest.mark.parametrize("window", [7, 64, 1000])
def test_windows_of_any_size_give_the_bits_of_one_pass(window: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Long inputs are cut into windows of paired pieces; the cut must never show in the numbers or the state,
    whatever the segment lengths (one bar, odd counts, two segments of one series in a row)."""
    from gpu_kernels import features as feat

    lengths = [901, 1, 350, 3, 2, 1200, 77]
    cols = {k: np.concatenate([market(40 + i, n)[k] for i, n in enumerate(lengths)])
            for k in ("high", "low", "close", "volume")}
    hi = np.cumsum(lengths)
    lo = hi - np.asarray(lengths)
    slots = np.array([0, 1, 2, 2, 3, 4, 5])  # segments 2 and 3 continue one series
    fs = FeatureSet()
    whole, whole_state = fs.compute(fs.empty_state(), slots, lo, hi, **cols)
    monkeypatch.setattr(feat, "_WINDOW", window)
    pieces = list(feat._windows(slots, lo, hi, int(hi[-1])))
    assert len(pieces) > 1 and sum(int((h - lo_).sum()) for _, lo_, h in pieces) == hi[-1]
    cut, cut_state = fs.compute(fs.empty_state(), slots, lo, hi, **cols)
    for name in DEFAULT_FEATURES:
        np.testing.assert_array_equal(cut[name], whole[name], err_msg=name)
    for a, b in zip(cut_state.vals, whole_state.vals, strict=True):
        np.testing.assert_array_equal(a, b)

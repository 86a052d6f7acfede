"""A user's own indicator, registered without touching the processor: here TA-Lib's WMA, checked against it."""

from __future__ import annotations

import numpy as np
import talib
from numba import njit

from gpu_kernels.features import FeatureSet, register_indicator
from processors.features import EngineConfig, FeatureEngine
from processors.synthetic import MarketSpec, TickGenerator


@njit(cache=True)
def wma_kernel(seg_slot, seg_lo, seg_hi, high, low, close, volume, params, counts, vals, out):
    """Weighted moving average; state per series: a ring of the last n closes."""
    n = params[0]
    weights = n * (n + 1) / 2.0
    for g in range(len(seg_slot)):
        s = seg_slot[g]
        c = counts[s]
        for r in range(seg_lo[g], seg_hi[g]):
            vals[s, c % n] = close[r]
            if c >= n - 1:
                acc = 0.0
                for i in range(n):  # oldest first, weight 1 .. n
                    acc += vals[s, (c - n + 1 + i) % n] * (i + 1)
                out[r] = acc / weights
            c += 1
        counts[s] = c


register_indicator("wma", r"^wma_(\d+)$", width=lambda params: params[0], kernel=wma_kernel)


def test_a_registered_indicator_matches_its_reference_and_runs_in_the_engine() -> None:
    close = 100 + np.cumsum(np.random.default_rng(4).standard_normal(500))
    fs = FeatureSet(["wma_10", "sma_10"])
    ones = np.ones_like(close)
    out, _ = fs.compute(fs.empty_state(), [0], [0], [500], ones, ones, close, ones)
    np.testing.assert_allclose(out["wma_10"], talib.WMA(close, 10), rtol=1e-9, equal_nan=True)

    engine = FeatureEngine(EngineConfig(intervals=("1s",), features=("wma_5", "rsi_14")))
    ticks = TickGenerator(MarketSpec(symbols=3, seed=2, rate=100)).next_chunk(3000)
    result, _ = engine.process(engine.empty_state(), ticks)
    assert np.isfinite(result.closed[0].features["wma_5"]).any()

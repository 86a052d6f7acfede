"""Indicator kernels offline: StreamQuant's feature set over many symbols against TA-Lib symbol by symbol.

    python -m bench.kernels_vs_talib [--symbols 100] [--bars 100000]

Both compute the same 14 columns (SMA 20, EMA 12 and 26, RSI 14, MACD 12/26/9 with signal and histogram,
Bollinger 20/2, ATR 14, OBV, log return, STDDEV 20 of log returns) on one core, best of 3.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import talib

from gpu_kernels.features import FeatureSet


def talib_all(h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray) -> None:
    talib.SMA(c, 20)
    talib.EMA(c, 12)
    talib.EMA(c, 26)
    talib.RSI(c, 14)
    talib.MACD(c, 12, 26, 9)
    talib.BBANDS(c, 20, 2, 2, talib.MA_Type.SMA)
    talib.ATR(h, lo, c, 14)
    talib.OBV(c, v)
    lr = np.empty_like(c)
    lr[0] = np.nan
    np.log(c[1:] / c[:-1], out=lr[1:])
    talib.STDDEV(lr, 20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--bars", type=int, default=100_000)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rng = np.random.default_rng(1)
    n, s = args.bars, args.symbols
    close = 100 * np.exp(np.cumsum(rng.standard_normal((s, n)) * 0.01, axis=1))
    high = close * (1 + rng.uniform(0, 0.01, (s, n)))
    low = close * (1 - rng.uniform(0, 0.01, (s, n)))
    volume = rng.integers(1, 10_000, (s, n)).astype(np.float64)
    fs = FeatureSet()
    seg_lo = np.arange(s) * n
    flat = [a.reshape(-1) for a in (high, low, close, volume)]
    fs.compute(fs.empty_state(), np.arange(s), seg_lo, seg_lo + n, *flat)  # compile once

    def ours() -> None:
        fs.compute(fs.empty_state(), np.arange(s), seg_lo, seg_lo + n, *flat)

    def theirs() -> None:
        for i in range(s):
            talib_all(high[i], low[i], close[i], volume[i])

    results = {}
    for name, fn in (("StreamQuant FeatureSet.compute (all symbols, one call)", ours),
                     ("TA-Lib, symbol by symbol", theirs)):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        results[name] = best
    print(f"\n{s} symbols × {n:,} bars = {s * n:,} bars, 14 indicator columns, one core, best of 3\n")
    print("| implementation | seconds | bars/s | TA-Lib time ÷ this |\n| --- | ---: | ---: | ---: |")
    for name, sec in results.items():
        print(f"| {name} | {sec:.2f} | {s * n / sec:,.0f} | {results['TA-Lib, symbol by symbol'] / sec:.2f}× |")


if __name__ == "__main__":
    main()

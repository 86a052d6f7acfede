"""Indicator kernels offline: StreamQuant's feature set over many symbols against TA-Lib symbol by symbol.

    python -m bench.kernels_vs_talib [--symbols 100] [--bars 100000]

Both compute the same 14 columns (SMA 20, EMA 12 and 26, RSI 14, MACD 12/26/9 with signal and histogram,
Bollinger 20/2, ATR 14, OBV, log return, STDDEV 20 of log returns) on one core, best of 3.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import talib

from gpu_kernels.features import FeatureSet


def talib_all(h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
    lr = np.empty_like(c)
    lr[0] = np.nan
    np.log(c[1:] / c[:-1], out=lr[1:])
    return [talib.SMA(c, 20), talib.EMA(c, 12), talib.EMA(c, 26), talib.RSI(c, 14), *talib.MACD(c, 12, 26, 9),
            *talib.BBANDS(c, 20, 2, 2, talib.MA_Type.SMA), talib.ATR(h, lo, c, 14), talib.OBV(c, v), lr,
            talib.STDDEV(lr, 20, 1)]


def synthetic_bars(s: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (symbols × bars) high, low, close and volume: GBM closes, a spread of up to 1 % around them."""
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.standard_normal((s, n)) * 0.01, axis=1))
    high = close * (1 + rng.uniform(0, 0.01, (s, n)))
    low = close * (1 - rng.uniform(0, 0.01, (s, n)))
    volume = rng.integers(1, 10_000, (s, n)).astype(np.float64)
    return high, low, close, volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--bars", type=int, default=100_000)
    parser.add_argument("--each", action="store_true", help="also time each indicator alone against TA-Lib's")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    n, s = args.bars, args.symbols
    high, low, close, volume = synthetic_bars(s, n)
    fs = FeatureSet()
    seg_lo = np.arange(s) * n
    flat = [a.reshape(-1) for a in (high, low, close, volume)]
    fs.compute(fs.empty_state(), np.arange(s), seg_lo, seg_lo + n, *flat)  # compile once

    def ours() -> object:
        return fs.compute(fs.empty_state(), np.arange(s), seg_lo, seg_lo + n, *flat)

    def theirs() -> None:  # each symbol's columns dropped at once: they stay in cache-warm, reused memory
        for i in range(s):
            talib_all(high[i], low[i], close[i], volume[i])

    def theirs_kept() -> list[list[np.ndarray]]:  # what a feature table needs: every column of every symbol
        return [talib_all(high[i], low[i], close[i], volume[i]) for i in range(s)]

    results = {}
    kept = "TA-Lib, symbol by symbol, keeping its columns"
    dropped = "TA-Lib, symbol by symbol, dropping each symbol's columns"
    for name, fn in (("StreamQuant FeatureSet.compute (all symbols, one call; keeps its columns)", ours),
                     (kept, theirs_kept), (dropped, theirs)):
        results[name] = _best(fn)
    print(f"\n{s} symbols × {n:,} bars = {s * n:,} bars, 14 indicator columns, one core, best of 3\n")
    print("| implementation | seconds | bars/s | TA-Lib (kept) ÷ this | TA-Lib (dropped) ÷ this |\n"
          "| --- | ---: | ---: | ---: | ---: |")
    for name, sec in results.items():
        ratios = f"{results[kept] / sec:.2f}× | {results[dropped] / sec:.2f}×"
        print(f"| {name} | {sec:.2f} | {s * n / sec:,.0f} | {ratios} |")
    if args.each:
        each(s, n, high, low, close, volume, flat, seg_lo)


def _best(fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
        del out
    return best


def each(s: int, n: int, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray,
         flat: list[np.ndarray], seg_lo: np.ndarray) -> None:
    """Each indicator alone over all symbols, both sides keeping their output."""
    def stddev_of_logret(i: int) -> Any:
        return talib.STDDEV(np.r_[np.nan, np.log(close[i, 1:] / close[i, :-1])], 20, 1)

    peers: dict[str, Callable[[int], Any]] = {
        "sma_20": lambda i: talib.SMA(close[i], 20), "ema_12": lambda i: talib.EMA(close[i], 12),
        "rsi_14": lambda i: talib.RSI(close[i], 14), "macd_12_26_9": lambda i: talib.MACD(close[i], 12, 26, 9),
        "bb_upper_20_2": lambda i: talib.BBANDS(close[i], 20, 2, 2, talib.MA_Type.SMA),
        "atr_14": lambda i: talib.ATR(high[i], low[i], close[i], 14), "obv": lambda i: talib.OBV(close[i], volume[i]),
        "vol_20": stddev_of_logret,
    }
    print("\n| indicator alone | StreamQuant s | TA-Lib s | TA-Lib ÷ StreamQuant |\n| --- | ---: | ---: | ---: |")
    for name, peer in peers.items():
        fs = FeatureSet((name,))
        slots = np.arange(s)
        fs.compute(fs.empty_state(), slots, seg_lo, seg_lo + n, *flat)
        ours = _best(lambda fs=fs, slots=slots: fs.compute(fs.empty_state(), slots, seg_lo, seg_lo + n, *flat))
        theirs = _best(lambda peer=peer: [peer(i) for i in range(s)])
        print(f"| {name} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.2f}× |")


if __name__ == "__main__":
    main()

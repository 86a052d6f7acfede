"""A seeded synthetic market: geometric Brownian motion ticks with realistic sizes and spreads.

Used by `streamquant produce ticks`, demos, tests and (later) synthetic backtest data. The same seed,
rate and sequence of chunk sizes give the same ticks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.ticks import TickColumns

MS_PER_YEAR = 365.25 * 24 * 3600 * 1000
EXCHANGES = ("XNAS", "XNYS", "ARCX", "BATS", "IEXG")


@dataclass(frozen=True, slots=True)
class MarketSpec:
    symbols: int = 100
    seed: int = 1
    rate: float = 10_000.0  # ticks per second of event time, over all symbols
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    tick_size: float = 0.01


class TickGenerator:
    """Yields chunks of ticks in event-time order; symbol activity is skewed like a real universe."""

    def __init__(self, spec: MarketSpec) -> None:
        if spec.symbols < 1 or spec.rate <= 0:
            raise ValueError("a market needs at least one symbol and a positive rate")
        self.spec = spec
        self._rng = np.random.default_rng(spec.seed)
        n = spec.symbols
        self.symbols = tuple(f"S{i:03d}" if n <= 1000 else f"S{i:05d}" for i in range(n))
        self._log_price = np.log(self._rng.uniform(10.0, 500.0, n))
        self._sigma = self._rng.uniform(0.15, 0.60, n)  # annualised volatility
        self._half_spread_bps = self._rng.uniform(0.5, 5.0, n)
        weights = 1.0 / np.arange(1, n + 1) ** 0.8  # Zipf-like: a few symbols trade most
        self._weights = weights / weights.sum()
        self._last_ts = np.full(n, spec.start_ms, dtype=np.int64)
        self._emitted = 0

    @property
    def emitted(self) -> int:
        return self._emitted

    def next_chunk(self, count: int) -> TickColumns:
        spec, rng = self.spec, self._rng
        seq = np.arange(self._emitted, self._emitted + count, dtype=np.float64)
        ts = spec.start_ms + np.floor(seq * 1000.0 / spec.rate).astype(np.int64)
        codes = rng.choice(len(self.symbols), size=count, p=self._weights).astype(np.int32)
        z = rng.standard_normal(count)

        # Time since each tick's symbol last traded, then GBM log increments, summed per symbol in order.
        order = np.argsort(codes, kind="stable")
        sc, sts = codes[order], ts[order]
        first = np.r_[True, sc[1:] != sc[:-1]]
        prev_ts = np.empty_like(sts)
        prev_ts[1:] = sts[:-1]
        prev_ts[first] = self._last_ts[sc[first]]
        dt_years = np.maximum(sts - prev_ts, 1) / MS_PER_YEAR
        sigma = self._sigma[sc]
        step = -0.5 * sigma**2 * dt_years + sigma * np.sqrt(dt_years) * z[order]
        csum = np.cumsum(step)
        seg_start = np.flatnonzero(first)
        seg_len = np.diff(np.r_[seg_start, len(sc)])
        base = np.repeat(csum[seg_start] - step[seg_start], seg_len)
        log_price_sorted = self._log_price[sc] + (csum - base)
        last = np.r_[seg_start[1:] - 1, len(sc) - 1]
        self._log_price[sc[last]] = log_price_sorted[last]
        self._last_ts[sc[last]] = sts[last]

        log_price = np.empty(count)
        log_price[order] = log_price_sorted
        mid = np.exp(log_price)
        tick = spec.tick_size
        price = np.maximum(np.round(mid / tick) * tick, tick)
        half = np.maximum(np.round(mid * self._half_spread_bps[codes] * 1e-4 / tick), 1) * tick
        bid = np.maximum(np.round((mid - half) / tick) * tick, tick)
        ask = np.round((mid + half) / tick) * tick
        ask = np.maximum(ask, bid + tick)
        size = np.maximum(np.round(np.exp(rng.normal(4.0, 1.1, count))), 1.0)
        exchange = rng.integers(0, len(EXCHANGES), count).astype(np.int32)

        self._emitted += count
        return TickColumns(
            symbol_codes=codes,
            symbols=self.symbols,
            ts=ts,
            price=np.round(price, 6),
            size=size,
            bid=np.round(bid, 6),
            ask=np.round(ask, 6),
            exchange_codes=exchange,
            exchanges=EXCHANGES,
        )

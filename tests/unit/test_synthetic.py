"""The synthetic market is seeded, well-formed, and its volatility is the one it was given."""

from __future__ import annotations

import numpy as np

from processors.synthetic import MS_PER_YEAR, MarketSpec, TickGenerator
from schemas.tick_decoder import TickDecoder
from schemas.ticks import encode_columns


def test_same_seed_same_ticks_and_different_seed_different_ticks() -> None:
    a = TickGenerator(MarketSpec(symbols=20, seed=3)).next_chunk(1000)
    b = TickGenerator(MarketSpec(symbols=20, seed=3)).next_chunk(1000)
    c = TickGenerator(MarketSpec(symbols=20, seed=4)).next_chunk(1000)
    assert a.to_records() == b.to_records()
    assert a.to_records() != c.to_records()


def test_ticks_are_valid_ordered_and_quotes_are_sane() -> None:
    gen = TickGenerator(MarketSpec(symbols=50, seed=1, rate=20_000))
    chunks = [gen.next_chunk(n) for n in (1, 500, 7000)]
    ts = np.concatenate([c.ts for c in chunks])
    assert np.all(np.diff(ts) >= 0)
    for c in chunks:
        assert np.all(c.price > 0) and np.all(c.size >= 1)
        assert np.all(c.bid < c.ask) and np.all(c.bid > 0)
        decoded = TickDecoder().decode(encode_columns(c))
        assert decoded.rejects == [] and len(decoded.ticks) == len(c)


def test_log_returns_have_the_configured_volatility() -> None:
    # One symbol, many ticks: the sample stdev of per-tick log returns, scaled to a year, is sigma.
    spec = MarketSpec(symbols=1, seed=11, rate=1.0, tick_size=1e-9)
    gen = TickGenerator(spec)
    sigma = float(gen._sigma[0])
    chunk = gen.next_chunk(200_000)
    r = np.diff(np.log(chunk.price))
    dt_years = 1000.0 / MS_PER_YEAR
    measured = r.std(ddof=1) / np.sqrt(dt_years)
    assert abs(measured - sigma) / sigma < 0.02

"""The engine against two independent libraries, under the same conventions.

vectorbt: `Portfolio.from_signals` per symbol (its own moving averages and simulation, one column per symbol,
all-in with `size=inf`, fees and slippage, halted bars left out of the symbol's series) gives the same
per-symbol total return and trade count as `trend_following`. empyrical: the engine's metrics equal
empyrical's on the same bar returns.
"""

from __future__ import annotations

import empyrical
import numpy as np
import pandas as pd
import pytest
import vectorbt as vbt

from processors import backtest as bt
from schemas.records import BacktestCommand, DataSource

FAST, SLOW = 5, 20
pytestmark = pytest.mark.filterwarnings("ignore::numba.NumbaPendingDeprecationWarning")  # inside vectorbt


def market(seed: int, rows: int = 260, symbols: int = 6) -> bt.BarPanel:
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0.0003, 0.02, (rows, symbols)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.005, (rows, symbols)))
    close[rng.random((rows, symbols)) < 0.05] = np.nan
    close[:30, 1] = np.nan
    ts = 1_600_000_000_000 + np.arange(rows, dtype=np.int64) * 86_400_000
    return bt.BarPanel(ts, open_, open_ * 1.01, open_ * 0.99, close, np.ones((rows, symbols)),
                       tuple(f"S{i}" for i in range(symbols)))


def command(**kw: object) -> BacktestCommand:
    base: dict[str, object] = dict(job_id="ref", strategy="trend_following", universe=tuple(f"S{i}" for i in range(6)),
                                   start="2020-01-01", end="2021-12-31", data=DataSource("synthetic"),
                                   params={"fast": FAST, "slow": SLOW}, fees_bps=10, slippage_bps=5,
                                   initial_capital=60_000)
    base.update(kw)
    return BacktestCommand(**base)  # type: ignore[arg-type]


def vectorbt_symbol(close: pd.Series, open_: pd.Series, *, next_open: bool, long_short: bool,
                    cash: float) -> tuple[float, int]:
    """Total return and trade count of one symbol in vectorbt, from vectorbt's own SMAs."""
    fast = vbt.MA.run(close, FAST).ma.to_numpy()
    slow = vbt.MA.run(close, SLOW).ma.to_numpy()
    state = np.where(fast > slow, 1, np.where(fast < slow, -1 if long_short else 0, 0))
    prev = np.r_[0, state[:-1]]
    signals = {
        "entries": (state == 1) & (prev != 1),
        "exits": (prev == 1) & (state != 1) if not long_short else (prev == 1) & (state == 0),
    }
    if long_short:
        signals["short_entries"] = (state == -1) & (prev != -1)
        signals["short_exits"] = (prev == -1) & (state == 0)
    if next_open:  # decided on a bar's close, filled at the next bar's open
        signals = {k: np.r_[False, v[:-1]] for k, v in signals.items()}
    frames = {k: pd.Series(v, index=close.index) for k, v in signals.items()}
    pf = vbt.Portfolio.from_signals(close, price=open_ if next_open else close, size=np.inf, fees=0.001,
                                    slippage=0.0005, init_cash=cash, **frames)
    return float(pf.total_return()), int(pf.trades.count())


@pytest.mark.parametrize("execution", ["close", "next_open"])
@pytest.mark.parametrize("direction", ["long_only", "long_short"])
def test_per_symbol_results_match_vectorbt(execution: str, direction: str) -> None:
    bars = market(11)
    out = bt.run_backtest(command(execution=execution, direction=direction), bars)
    per_symbol = out.results[0].per_symbol
    trades = 0
    for j, symbol in enumerate(bars.symbols):
        ok = bars.tradable[:, j]
        close = pd.Series(bars.close[ok, j])
        open_ = pd.Series(bars.open[ok, j])
        total, count = vectorbt_symbol(close, open_, next_open=execution == "next_open",
                                       long_short=direction == "long_short", cash=10_000.0)
        assert per_symbol[symbol]["total_return"] == pytest.approx(total, rel=1e-9, abs=1e-12), symbol
        assert per_symbol[symbol]["trades"] == count, symbol
        trades += count
    assert trades > 20  # the comparison exercised real trading


@pytest.mark.parametrize("direction", ["long_only", "long_short"])
def test_metrics_match_empyrical(direction: str) -> None:
    bars = market(5)
    cmd = command(direction=direction, params={"fast": [3, 5, 10], "slow": [20, 40]})
    out = bt.run_backtest(cmd, bars)
    ppy = out.periods_per_year
    assert ppy == 252
    for i, result in enumerate(out.results):
        equity = out.equity[i].to_numpy()
        returns = pd.Series(np.diff(np.r_[cmd.initial_capital, equity]) / np.r_[cmd.initial_capital, equity[:-1]])
        m = result.metrics
        want = {
            "total_return": empyrical.cum_returns_final(returns),
            "cagr": empyrical.cagr(returns, annualization=ppy),
            "volatility": empyrical.annual_volatility(returns, annualization=ppy),
            "sharpe": empyrical.sharpe_ratio(returns, annualization=ppy),
            "sortino": empyrical.sortino_ratio(returns, annualization=ppy),
            "max_drawdown": empyrical.max_drawdown(returns),
            "calmar": empyrical.calmar_ratio(returns, annualization=ppy),
        }
        for name, value in want.items():
            assert m[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (i, name)


def test_undefined_metrics_are_null() -> None:
    rows = 50
    flat = np.full((rows, 2), 10.0)
    ts = 1_600_000_000_000 + np.arange(rows, dtype=np.int64) * 86_400_000
    bars = bt.BarPanel(ts, flat, flat, flat, flat, flat, ("S0", "S1"))
    out = bt.run_backtest(command(universe=("S0", "S1")), bars)
    m = out.results[0].metrics
    assert m["total_return"] == 0.0 and m["trades"] == 0 and m["max_drawdown"] == 0.0
    assert m["sharpe"] is None and m["sortino"] is None and m["calmar"] is None and m["win_rate"] is None

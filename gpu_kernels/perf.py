"""Performance metrics of equity curves, one row per parameter set, on NumPy or CuPy (`xp`).

Definitions (written for users in the docs' "Backtests" section) follow empyrical's, so a result can be
checked against it: bar returns r_t = E_t / E_{t-1} - 1 with E_{-1} the initial capital; sample standard
deviation (ddof 1); risk-free rate 0; annualisation by the periods per year of the bar interval; drawdown
measured from the running peak of the equity with the initial capital as the first peak (a negative
number); Sortino's downside deviation is the root mean square of the negative returns over all bars.
An undefined value (no variation, no drawdown, a non-positive final equity for CAGR) is NaN.
"""

from __future__ import annotations

import math

from gpu_kernels.backtest import Array, array_module


def running_max(x: Array) -> Array:
    """Running maximum along the last axis by doubling steps (log2 T passes; CuPy has no `maximum.accumulate`)."""
    xp = array_module(x)
    out = xp.array(x, copy=True)
    step = 1
    while step < out.shape[-1]:
        shifted = out[..., :-step].copy()
        xp.maximum(out[..., step:], shifted, out=out[..., step:])
        step *= 2
    return out


def equity_metrics(equity: Array, capital: float, periods_per_year: float) -> dict[str, Array]:
    """total_return, cagr, volatility, sharpe, sortino, max_drawdown, calmar of (P × T) equity curves."""
    xp = array_module(equity)
    n_sets, bars = equity.shape
    start = xp.full((n_sets, 1), float(capital))
    before = xp.concatenate((start, equity[:, :-1]), axis=1)
    r = equity / before - 1.0
    growth = equity[:, -1] / capital
    years = bars / periods_per_year
    cagr = xp.where(growth > 0, xp.maximum(growth, 0.0) ** (1.0 / years) - 1.0, xp.nan)
    mean = r.mean(axis=1)
    sd = r.std(axis=1, ddof=1) if bars > 1 else xp.full(n_sets, xp.nan)
    root = math.sqrt(periods_per_year)
    downside = xp.sqrt((xp.minimum(r, 0.0) ** 2).mean(axis=1))
    peak = running_max(xp.concatenate((start, equity), axis=1))[:, 1:]
    drawdown = (equity / peak - 1.0).min(axis=1)
    with_sd = sd > 0
    return {
        "total_return": growth - 1.0,
        "cagr": cagr,
        "volatility": sd * root,
        "sharpe": xp.where(with_sd, mean / xp.where(with_sd, sd, 1.0) * root, xp.nan),
        "sortino": xp.where(downside > 0, mean / xp.where(downside > 0, downside, 1.0) * root, xp.nan),
        "max_drawdown": drawdown,
        "calmar": xp.where(drawdown < 0, cagr / xp.where(drawdown < 0, -drawdown, 1.0), xp.nan),
    }


def drawdown_curve(equity: Array, capital: float) -> Array:
    """Drawdown at each bar (≤ 0) against the running peak, the initial capital being the first peak."""
    xp = array_module(equity)
    start = xp.full((*equity.shape[:-1], 1), float(capital))
    peak = running_max(xp.concatenate((start, equity), axis=-1))[..., 1:]
    return equity / peak - 1.0

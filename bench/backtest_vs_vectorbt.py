"""Backtests: StreamQuant's engine against vectorbt doing the same work, in one run.

    python -m bench.backtest_vs_vectorbt [--days 1000] [--symbols 100] [--repeat 20]

(1) One trend-following backtest (SMA 10/30, long-only, fees 10 bps) over days × symbols of seeded GBM closes,
warm: indicators, signals, simulation, metrics (portfolio and per symbol). vectorbt: `MA.run` twice, entry
and exit signals from the state, `Portfolio.from_signals` with one column per symbol grouped into one
portfolio without cash sharing (`size=inf`: all in), then the same metrics. Median and best of `--repeat`.

(2) A 1,000-combination (fast, slow) sweep of the same strategy on the same data: 100,000 backtests.
StreamQuant runs the grid as one command (chunked internally); vectorbt runs it 100 combinations at a time
(all at once would need several GB), grouped per combination. Each contender runs in its own process, so
its peak RSS is its own. Both sides' per-symbol total returns are compared on the first combinations.

Every contender is pinned to one core; figures go to stdout and bench/out/backtest_vs_vectorbt.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

FEES = 0.001
FAST = list(range(2, 52, 2))  # 25 windows
SLOW = list(range(55, 255, 5))  # 40 windows: 1,000 combinations, all with fast < slow
VBT_CHUNK = 100


def market(days: int, symbols: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    close = 50 * np.exp(np.cumsum(rng.normal(0.0002, 0.02, (days, symbols)), axis=0))
    ts = 1_262_304_000_000 + np.arange(days, dtype=np.int64) * 86_400_000
    return ts, close


# ------------------------------------------------------------------------------------------------ ours


def ours(case: str, days: int, symbols: int, repeat: int) -> dict[str, Any]:
    from processors import backtest as bt
    from schemas.records import BacktestCommand, DataSource

    ts, close = market(days, symbols)
    if case == "gaps":  # 1% of bars halted: the packing and the mapping back to panel rows do real work
        close = np.where(np.random.default_rng(8).random(close.shape) < 0.01, np.nan, close)
    bars = bt.BarPanel(ts, close, close, close, close, np.ones_like(close), tuple(f"S{i:03d}" for i in range(symbols)))
    params: dict[str, Any] = {"fast": FAST, "slow": SLOW} if case == "sweep" else {"fast": 10, "slow": 30}
    cmd = BacktestCommand(job_id="bench", strategy="trend_following", universe=bars.symbols, start="2010-01-01",
                          end="2013-12-31", data=DataSource("synthetic"), params=params, fees_bps=FEES * 1e4)
    runs = 1 if case == "sweep" else repeat
    before = _peak_rss_mb()
    out, times = bt.run_backtest(cmd, bars), []  # warm: Numba kernels loaded, caches filled
    for _ in range(runs):
        start = time.perf_counter()
        out = bt.run_backtest(cmd, bars)
        times.append(time.perf_counter() - start)
    per_symbol = [[r.per_symbol[s]["total_return"] for s in bars.symbols] for r in out.results[:3]]
    return {"times": times, "sets": len(out.results), "per_symbol": per_symbol,
            "sharpe": out.results[0].metrics["sharpe"], "rss_mb": _peak_rss_mb(), "rss_before_mb": before}


# ------------------------------------------------------------------------------------------------ vectorbt


def theirs(case: str, days: int, symbols: int, repeat: int) -> dict[str, Any]:
    import warnings

    import pandas as pd
    import vectorbt as vbt

    warnings.filterwarnings("ignore")
    vbt.settings.returns["year_freq"] = "252 days"  # annualise like StreamQuant (vectorbt's default is 365)
    ts, close_np = market(days, symbols)
    close = pd.DataFrame(close_np, index=pd.to_datetime(ts, unit="ms"))
    combos = [(10, 30)] if case == "single" else [(f, s) for f in FAST for s in SLOW]

    def run(chunk: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        n = len(chunk)
        wide = pd.DataFrame(np.tile(close_np, (1, n)), index=close.index)
        fast = vbt.MA.run(close, [c[0] for c in chunk]).ma.to_numpy()
        slow = vbt.MA.run(close, [c[1] for c in chunk]).ma.to_numpy()
        state = fast > slow
        prev = np.vstack([np.zeros((1, state.shape[1]), bool), state[:-1]])
        entries = pd.DataFrame(state & ~prev, index=close.index)
        exits = pd.DataFrame(~state & prev, index=close.index)
        group = np.repeat(np.arange(n), symbols)
        pf = vbt.Portfolio.from_signals(wide, entries, exits, size=np.inf, fees=FEES, init_cash=100_000 / symbols,
                                        group_by=group, cash_sharing=False, freq="1D")
        metrics = [pf.total_return(), pf.annualized_return(), pf.annualized_volatility(), pf.sharpe_ratio(),
                   pf.sortino_ratio(), pf.max_drawdown(), pf.calmar_ratio(), pf.trades.count(), pf.trades.win_rate()]
        per_symbol = pf.total_return(group_by=False).to_numpy().reshape(n, symbols)
        return np.atleast_1d(np.asarray(metrics[3])), per_symbol

    before = _peak_rss_mb()
    run(combos[:2])  # warm: vectorbt's Numba functions compiled or loaded from its cache
    times, per_symbol, sharpe = [], [], None
    for _ in range(1 if case == "sweep" else repeat):
        start = time.perf_counter()
        for lo in range(0, len(combos), VBT_CHUNK):
            s, p = run(combos[lo : lo + VBT_CHUNK])
            if lo == 0:
                per_symbol, sharpe = p[:3].tolist(), float(s[0])
        times.append(time.perf_counter() - start)
    return {"times": times, "sets": len(combos), "per_symbol": per_symbol, "sharpe": sharpe, "rss_mb": _peak_rss_mb(),
            "rss_before_mb": before}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------ driver


def _child(who: str, case: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.backtest_vs_vectorbt", "--child", who, "--case", case, "--days",
           str(args.days), "--symbols", str(args.symbols), "--repeat", str(args.repeat)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--child", choices=("ours", "theirs"))
    parser.add_argument("--case", choices=("single", "sweep", "gaps"))
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    if args.child:
        fn = ours if args.child == "ours" else theirs
        print(json.dumps(fn(args.case, args.days, args.symbols, args.repeat)))
        return
    import vectorbt

    d, s = args.days, args.symbols
    res = {(who, case): _child(who, case, args) for case in ("single", "sweep") for who in ("ours", "theirs")}
    gaps = _child("ours", "gaps", args)
    agree = {}
    for case in ("single", "sweep"):
        diff = np.array(res[("ours", case)]["per_symbol"]) - np.array(res[("theirs", case)]["per_symbol"])
        agree[case] = float(np.max(np.abs(diff)))
    o1, t1 = res[("ours", "single")], res[("theirs", "single")]
    o_med, t_med = statistics.median(o1["times"]), statistics.median(t1["times"])
    print(f"\n(1) one trend-following backtest, SMA 10/30, {d:,} days × {s} symbols, warm, "
          f"median (best) of {args.repeat}, one core\n")
    print("| engine | ms | vectorbt ÷ this |\n| --- | ---: | ---: |")
    print(f"| StreamQuant `run_backtest` (cpu) | {o_med * 1e3:.2f} ({min(o1['times']) * 1e3:.2f}) | "
          f"{t_med / o_med:.1f}× |")
    print(f"| vectorbt {vectorbt.__version__} `Portfolio.from_signals` | {t_med * 1e3:.2f} "
          f"({min(t1['times']) * 1e3:.2f}) | 1.0× |")
    g_med = statistics.median(gaps["times"])
    print(f"| StreamQuant, the same data with 1% of bars halted | {g_med * 1e3:.2f} ({min(gaps['times']) * 1e3:.2f}) "
          f"| {t_med / g_med:.1f}× |")
    o2, t2 = res[("ours", "sweep")], res[("theirs", "sweep")]
    n = o2["sets"] * s
    print(f"\n(2) {o2['sets']:,} (fast, slow) combinations × {s} symbols = {n:,} backtests over {d:,} days, one core\n")
    print("| engine | seconds | backtests/s | vectorbt time ÷ this | peak RSS MB (before the run) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| StreamQuant (chunked grid) | {o2['times'][0]:.2f} | {n / o2['times'][0]:,.0f} | "
          f"{t2['times'][0] / o2['times'][0]:.1f}× | {o2['rss_mb']:,.0f} ({o2['rss_before_mb']:,.0f}) |")
    print(f"| vectorbt {vectorbt.__version__}, {VBT_CHUNK} combinations at a time | {t2['times'][0]:.2f} | "
          f"{n / t2['times'][0]:,.0f} | 1.0× | {t2['rss_mb']:,.0f} ({t2['rss_before_mb']:,.0f}) |")
    print(f"\nlargest per-symbol total-return difference: single {agree['single']:.1e}, sweep {agree['sweep']:.1e}; "
          f"Sharpe of the first set: ours {o1['sharpe']:.6f}, vectorbt {t1['sharpe']:.6f}")
    out = Path("bench/out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "backtest_vs_vectorbt.json").write_text(json.dumps(
        {f"{who}_{case}": v for (who, case), v in res.items()} | {"ours_gaps": gaps, "max_abs_diff": agree}, indent=1))


if __name__ == "__main__":
    main()

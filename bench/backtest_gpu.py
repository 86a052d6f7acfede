"""The backtest parameter sweep on the GPU against the CPU, same command, same bars, same run.

    python -m bench.backtest_gpu [--days 1000] [--symbols 100 1000] [--json OUT]

The sweep of bench/backtest_vs_vectorbt.py (trend following, 1,000 (fast, slow) combinations, fees 10 bps) over
days × symbols of the same seeded GBM closes: `run_backtest(..., backend="cpu")` on one core and
`backend="gpu"` (CuPy), warm, best of 3; backtests/s is combinations × symbols per second. The run checks that
both give the same per-symbol total returns (1e-9 relative) on every parameter set. Needs CuPy and a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from bench.backtest_vs_vectorbt import FAST, FEES, SLOW, market
from bench.gpu import require_cupy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--symbols", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    cupy = require_cupy()
    from processors import backtest as bt
    from schemas.records import BacktestCommand, DataSource

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    report: dict[str, Any] = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "days": args.days,
                              "combinations": len(FAST) * len(SLOW), "runs": {}}
    for symbols in args.symbols:
        ts, close = market(args.days, symbols)
        bars = bt.BarPanel(ts, close, close, close, close, np.ones_like(close),
                           tuple(f"S{i:04d}" for i in range(symbols)))
        cmd = BacktestCommand(job_id="bench", strategy="trend_following", universe=bars.symbols, start="2010-01-01",
                              end="2013-12-31", data=DataSource("synthetic"), params={"fast": FAST, "slow": SLOW},
                              fees_bps=FEES * 1e4)
        outcomes, times = {}, {}
        for backend in ("cpu", "gpu"):
            outcomes[backend] = bt.run_backtest(cmd, bars, backend=backend)  # warm
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                bt.run_backtest(cmd, bars, backend=backend)
                best = min(best, time.perf_counter() - started)
            times[backend] = best
        worst = 0.0
        for a, b in zip(outcomes["cpu"].results, outcomes["gpu"].results, strict=True):
            x = np.array([a.per_symbol[s]["total_return"] for s in bars.symbols])
            y = np.array([b.per_symbol[s]["total_return"] for s in bars.symbols])
            worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12))))
        assert worst < 1e-9, f"GPU and CPU differ by {worst:.1e} relative"
        backtests = report["combinations"] * symbols
        run = {"backtests": backtests, "cpu_s": times["cpu"], "gpu_s": times["gpu"],
               "cpu_backtests_per_s": backtests / times["cpu"], "gpu_backtests_per_s": backtests / times["gpu"],
               "gpu_speedup": times["cpu"] / times["gpu"], "max_rel_diff": worst}
        report["runs"][symbols] = run
        print(f"{backtests:,} backtests ({symbols} symbols × {report['combinations']:,} sets × {args.days} days): "
              f"CPU (one core) {times['cpu']:.2f} s = {run['cpu_backtests_per_s']:,.0f}/s, "
              f"GPU {times['gpu']:.3f} s = {run['gpu_backtests_per_s']:,.0f}/s ({run['gpu_speedup']:.1f}×); "
              f"total returns agree to {worst:.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()

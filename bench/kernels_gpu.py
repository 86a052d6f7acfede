"""The feature kernels on the GPU against this project's CPU path, same bars, same run.

    python -m bench.kernels_gpu [--symbols 1000] [--bars 10000] [--engine-ticks 1000000] [--json OUT]

Both compute the 14 default columns over symbols × bars (10M bars by default) with `FeatureSet.compute`:
the CPU with the Numba kernels on one core, the GPU with `indicators.cu` (one thread per symbol), timed
with the inputs already on the device and, separately, including the copies to and from the device (what a
streaming batch pays). Best of 3. Then the feature engine itself (ticks → bars → features, what `run features`
does per micro-batch, without Kafka) on backend cpu and gpu over the same ticks (500 symbols) cut into
micro-batches of 5,000 and 50,000 ticks: ticks/s of each, and their features compared.
Needs CuPy and a GPU; `make gpu-check` runs it after the parity tests.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.gpu import require_cupy
from bench.kernels_vs_talib import synthetic_bars
from gpu_kernels.features import FeatureSet


def best(fn: Callable[[], object], sync: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--bars", type=int, default=10_000)
    parser.add_argument("--engine-ticks", type=int, default=1_000_000, help="ticks through the feature engine")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    cupy = require_cupy()
    s, n = args.symbols, args.bars
    high, low, close, volume = synthetic_bars(s, n)
    flat = [np.ascontiguousarray(a.reshape(-1)) for a in (high, low, close, volume)]
    slots, seg_lo = np.arange(s), np.arange(s) * n
    seg_hi = seg_lo + n
    fs = FeatureSet()
    state = fs.empty_state(s)

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cpu_out, _ = fs.compute(state, slots, seg_lo, seg_hi, *flat)  # compiles the CPU kernels once
    cpu_s = best(lambda: fs.compute(state, slots, seg_lo, seg_hi, *flat), lambda: None)

    sync = cupy.cuda.Device().synchronize
    dev = [cupy.asarray(a) for a in (slots, seg_lo, seg_hi, *flat)]
    gpu_out, _ = fs.compute(state, *dev)  # compiles the CUDA kernels once
    gpu_s = best(lambda: fs.compute(state, *dev), sync)

    def with_copies() -> None:
        out, new = fs.compute(state, *(cupy.asarray(a) for a in (slots, seg_lo, seg_hi, *flat)))
        {k: cupy.asnumpy(v) for k, v in out.items()}
        [cupy.asnumpy(v) for v in new.vals]

    copies_s = best(with_copies, sync)
    worst = 0.0
    for name, want in cpu_out.items():
        got = cupy.asnumpy(gpu_out[name])
        ok = ~np.isnan(want)
        assert np.array_equal(ok, ~np.isnan(got)), name
        scale = max(float(np.max(np.abs(want[ok]))), 1e-300)
        worst = max(worst, float(np.max(np.abs(got[ok] - want[ok]))) / scale)
    bars = s * n
    result = {"symbols": s, "bars": bars, "device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
              "cpu_s": cpu_s, "gpu_s": gpu_s, "gpu_with_copies_s": copies_s, "speedup": cpu_s / gpu_s,
              "speedup_with_copies": cpu_s / copies_s, "max_rel_diff": worst}
    print(f"{bars:,} bars ({s} symbols × {n}), 14 columns, best of 3 on {result['device']}")
    print("| path | seconds | bars/s | ÷ CPU time |\n| --- | ---: | ---: | ---: |")
    print(f"| CPU (Numba, one core) | {cpu_s:.3f} | {bars / cpu_s:,.0f} | 1.00× |")
    print(f"| GPU (indicators.cu), data on the device | {gpu_s:.4f} | {bars / gpu_s:,.0f} | {cpu_s / gpu_s:.1f}× |")
    print(f"| GPU, with copies to and from the device | {copies_s:.4f} | {bars / copies_s:,.0f} | "
          f"{cpu_s / copies_s:.1f}× |")
    print(f"largest difference GPU vs CPU: {worst:.2e} of the column's scale")
    result["sweep"] = {}
    for per_symbol in (1, 10, 100, 1000):  # 1,000 symbols: where the GPU with its copies starts to pay
        rows = s * per_symbol
        part = [a.reshape(s, n)[:, :per_symbol].reshape(-1).copy() for a in flat]
        lo_p = np.arange(s) * per_symbol
        cpu_p = best(lambda p=part, lo=lo_p, k=per_symbol: fs.compute(state, slots, lo, lo + k, *p), lambda: None, 5)

        def copies_p(p: list[np.ndarray] = part, lo: np.ndarray = lo_p, k: int = per_symbol) -> None:
            out, new = fs.compute(state, *(cupy.asarray(a) for a in (slots, lo, lo + k, *p)))
            {k2: cupy.asnumpy(v) for k2, v in out.items()}
            [cupy.asnumpy(v) for v in new.vals]

        gpu_p = best(copies_p, sync, 5)
        result["sweep"][rows] = {"cpu_s": cpu_p, "gpu_with_copies_s": gpu_p}
        print(f"{rows:>10,} bars in one batch: CPU {cpu_p * 1e3:8.2f} ms, GPU with copies {gpu_p * 1e3:8.2f} ms",
              flush=True)
    if args.engine_ticks:
        result["engine"] = engine_backends(args.engine_ticks)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def engine_backends(ticks: int) -> dict[str, float]:
    """ticks/s of FeatureEngine.process on backend cpu and gpu, same micro-batches; features must agree."""
    from processors.features import EngineConfig, FeatureEngine
    from processors.synthetic import MarketSpec, TickGenerator

    chunks = TickGenerator(MarketSpec(symbols=500, seed=3, rate=10_000)).next_chunk(ticks)
    figures: dict[str, float] = {}
    for batch in (5_000, 50_000):
        pieces = [chunks.take(slice(lo, lo + batch)) for lo in range(0, ticks, batch)]
        closed: dict[str, list[Any]] = {}
        for backend in ("cpu", "gpu"):
            engine = FeatureEngine(EngineConfig(intervals=("1s", "1m"), backend=backend))
            assert engine.backend.active == backend, f"backend {backend} not in use: {engine.backend.reason}"
            state = engine.empty_state()
            engine.process(state, pieces[0])  # compiles the kernels outside the timing
            state = engine.empty_state()
            out: list[Any] = []
            started = time.perf_counter()
            for piece in pieces:
                result, state = engine.process(state, piece)
                out.extend(result.closed)
            figures[f"{backend}_batch_{batch}_ticks_per_s"] = ticks / (time.perf_counter() - started)
            closed[backend] = out
        for cpu, gpu in zip(closed["cpu"], closed["gpu"], strict=True):
            for name, values in cpu.features.items():
                np.testing.assert_allclose(gpu.features[name], values, rtol=1e-9, atol=1e-12, err_msg=name)
        print(f"feature engine, {ticks:,} ticks in batches of {batch:,}: CPU "
              f"{figures[f'cpu_batch_{batch}_ticks_per_s']:,.0f} ticks/s, GPU "
              f"{figures[f'gpu_batch_{batch}_ticks_per_s']:,.0f} ticks/s (features equal to 1e-9)", flush=True)
    return figures


if __name__ == "__main__":
    main()

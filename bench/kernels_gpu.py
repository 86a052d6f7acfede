"""The feature kernels on the GPU against this project's CPU path, same bars, same run.

    python -m bench.kernels_gpu [--symbols 1000] [--bars 10000] [--json OUT]

Both compute the 14 default columns over symbols × bars (10M bars by default) with `FeatureSet.compute`:
the CPU with the Numba kernels on one core, the GPU with `indicators.cu` (one thread per symbol), timed
with the inputs already on the device and, separately, including the copies to and from the device (what a
streaming batch pays). Best of 3. Needs CuPy and a GPU; `make gpu-check` runs it after the parity tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np

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
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device is visible")
    except Exception as err:
        sys.exit(f"error: the GPU benchmark needs CuPy and a GPU ({err})")
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

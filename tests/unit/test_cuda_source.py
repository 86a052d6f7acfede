"""The GPU kernels' CUDA source (gpu_kernels/indicators.cu) gives the CPU kernels' numbers.

Everywhere: the source is compiled for the host with the C++ compiler and run segment by segment (each GPU
thread in turn); it must equal the Numba kernels bit for bit and TA-Lib to 1e-9, under any cut of the stream.
Where CuPy sees a GPU: the same source through NVRTC on the device, against the CPU to 1e-9 relative (the
device's `log` may differ from the host's in the last bit).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu_kernels import cuda_indicators as cu
from gpu_kernels import indicators as ind
from gpu_kernels.features import DEFAULT_FEATURES, FeatureSet
from tests.unit.test_indicators import assert_matches, market, talib_features


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler to build the CUDA source for the host")
    return cu.host_kernels(cu.host_library(Path(tmp_path_factory.mktemp("cuda-host"))))


def stream(seeds: list[int], lengths: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    symbols = [market(seed, n) for seed, n in zip(seeds, lengths, strict=True)]
    cols = {k: np.concatenate([m[k] for m in symbols]) for k in ("high", "low", "close", "volume")}
    hi = np.cumsum(lengths)
    return cols, hi - np.asarray(lengths), hi


def test_the_cuda_source_matches_talib_over_many_symbols(host: Any) -> None:
    lengths = [2500, 40, 3000, 1, 35, 800, 2000, 26]
    cols, lo, hi = stream(list(range(len(lengths))), lengths)
    fs = FeatureSet()
    out, _ = fs.compute(fs.empty_state(), np.arange(len(lengths)), lo, hi, **cols, kernels=host)
    for i in range(len(lengths)):
        want = talib_features({k: v[lo[i]:hi[i]] for k, v in cols.items()})
        for name in DEFAULT_FEATURES:
            assert_matches(f"{name} (symbol {i})", out[name][lo[i]:hi[i]], want[name])


CUT_NAMES = (*DEFAULT_FEATURES, "sma_5", "ema_3", "rsi_2", "macd_3_7_2", "bb_upper_5_1.5", "atr_2", "vol_3")


def in_random_cuts(seed: int, runs: list[Callable[..., Any]]) -> list[tuple[dict[str, np.ndarray], Any]]:
    """Interleaved symbols fed in random micro-batches (the same cuts for each run): outputs in row order and
    the final state of each `run(fs, state, order, seg_lo, seg_hi, batch) -> (out, state)`, as NumPy."""
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(1, 400, 6)]
    cols, lo, _hi = stream([seed * 10 + i for i in range(6)], lengths)
    names = CUT_NAMES
    fs = FeatureSet(names)
    results = []
    for run in runs:
        state = fs.empty_state()
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in names}
        done = np.zeros(len(lengths), np.int64)
        while (done < np.asarray(lengths)).any():  # a batch: a few bars of some symbols, in segment order
            take = np.minimum(rng.integers(0, 50, len(lengths)), np.asarray(lengths) - done)
            order = np.flatnonzero(take)
            if not len(order):
                continue
            seg_lo = np.cumsum(np.r_[0, take[order]])[:-1]
            seg_hi = seg_lo + take[order]
            rows = np.concatenate([np.arange(lo[s] + done[s], lo[s] + done[s] + take[s]) for s in order])
            batch = {k: np.ascontiguousarray(v[rows]) for k, v in cols.items()}
            out, state = run(fs, state, order, seg_lo, seg_hi, batch)
            for name in names:
                pieces[name].append(np.column_stack([rows, out[name]]))
            done += take
        merged = {}
        for name in names:
            block = np.concatenate(pieces[name])
            merged[name] = block[np.argsort(block[:, 0], kind="stable"), 1]
        results.append((merged, state))
        rng = np.random.default_rng(seed)  # the same cuts for the next implementation
        rng.integers(1, 400, 6)
    return results


def on(kernels: Any) -> Callable[..., Any]:
    return lambda fs, state, order, seg_lo, seg_hi, batch: fs.compute(state, order, seg_lo, seg_hi, **batch,
                                                                      kernels=kernels)


@pytest.mark.parametrize("seed", range(4))
def test_the_cuda_source_equals_the_cpu_kernels_bit_for_bit_in_any_cut(host: Any, seed: int) -> None:
    """Interleaved symbols fed in random micro-batches: outputs and final state identical to the CPU's."""
    (cpu, cpu_state), (cuda, cuda_state) = in_random_cuts(seed, [on(ind), on(host)])
    for name in CUT_NAMES:
        assert np.array_equal(cpu[name], cuda[name], equal_nan=True), name
    for a, b in zip(cpu_state.vals, cuda_state.vals, strict=True):
        assert np.array_equal(a, b, equal_nan=True)
    for a, b in zip(cpu_state.counts, cuda_state.counts, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kernel", ["highest", "lowest"])
def test_the_cuda_extremes_equal_the_cpu_kernels(host: Any, kernel: str) -> None:
    cols, lo, hi = stream([3, 4, 5], [500, 7, 300])
    x = cols["close"]
    n = 9
    outs = []
    for k in (ind, host):
        counts = np.zeros(3, np.int64)
        vals = np.zeros((3, 2 + n))
        out = np.empty(len(x))
        for a, b in ((0, 0.4), (0.4, 1.0)):  # two batches, cutting every series
            cut_lo = (lo + (hi - lo) * a).astype(np.int64)
            cut_hi = (lo + (hi - lo) * b).astype(np.int64)
            getattr(k, kernel)(np.arange(3, dtype=np.int64), cut_lo, cut_hi, x, n, counts, vals, out)
        outs.append((out, counts, vals))
    assert np.array_equal(outs[0][0], outs[1][0], equal_nan=True)
    assert np.array_equal(outs[0][2], outs[1][2]) and np.array_equal(outs[0][1], outs[1][1])


def gpu() -> Any:
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CuPy GPU visible")
    except cupy.cuda.runtime.CUDARuntimeError:
        pytest.skip("no CuPy GPU visible")
    return cupy


def test_the_gpu_equals_the_cpu() -> None:
    cupy = gpu()
    lengths = [5000, 40, 3000, 1, 35, 800, 2000, 26] * 8
    cols, lo, hi = stream(list(range(len(lengths))), lengths)
    fs = FeatureSet()
    slots = np.arange(len(lengths))
    cpu_out, cpu_state = fs.compute(fs.empty_state(), slots, lo, hi, **cols)
    dev = {k: cupy.asarray(v) for k, v in cols.items()}
    gpu_out, gpu_state = fs.compute(fs.empty_state(), cupy.asarray(slots), cupy.asarray(lo), cupy.asarray(hi), **dev)
    for name in DEFAULT_FEATURES:
        assert_matches(f"{name} on the GPU", cupy.asnumpy(gpu_out[name]), cpu_out[name])
    for a, b in zip(cpu_state.counts, gpu_state.counts, strict=True):
        assert np.array_equal(a, cupy.asnumpy(b))


def test_the_gpu_matches_talib_over_many_symbols() -> None:
    cupy = gpu()
    lengths = [2500, 40, 3000, 1, 35, 800, 2000, 26]
    cols, lo, hi = stream(list(range(len(lengths))), lengths)
    fs = FeatureSet()
    dev = {k: cupy.asarray(v) for k, v in cols.items()}
    out, _ = fs.compute(fs.empty_state(), np.arange(len(lengths)), lo, hi, **dev)
    for i in range(len(lengths)):
        want = talib_features({k: v[lo[i]:hi[i]] for k, v in cols.items()})
        for name in DEFAULT_FEATURES:
            assert_matches(f"{name} (symbol {i}, GPU)", cupy.asnumpy(out[name][lo[i]:hi[i]]), want[name])


@pytest.mark.parametrize("seed", range(4))
def test_the_gpu_is_split_invariant_bit_for_bit_and_equals_the_cpu(seed: int) -> None:
    """The device in random micro-batches (state kept on the device between them) against the device in one
    batch per series: identical bits; and against the CPU kernels in the same cuts: 1e-9."""
    cupy = gpu()

    def on_gpu(fs: FeatureSet, state: Any, order: Any, seg_lo: Any, seg_hi: Any, batch: Any) -> Any:
        out, new = fs.compute(state, order, seg_lo, seg_hi, **{k: cupy.asarray(v) for k, v in batch.items()})
        return {k: cupy.asnumpy(v) for k, v in out.items()}, new

    (cpu, cpu_state), (dev, dev_state) = in_random_cuts(seed, [on(ind), on_gpu])
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(1, 400, 6)]
    cols, lo, hi = stream([seed * 10 + i for i in range(6)], lengths)
    fs = FeatureSet(CUT_NAMES)
    on_device = {k: cupy.asarray(v) for k, v in cols.items()}
    whole, whole_state = fs.compute(fs.empty_state(), np.arange(6), lo, hi, **on_device)
    for name in CUT_NAMES:
        assert np.array_equal(dev[name], cupy.asnumpy(whole[name]), equal_nan=True), f"{name}: cut changes bits"
        assert_matches(f"{name} on the GPU in cuts", dev[name], cpu[name])
    for a, b in zip(dev_state.vals, whole_state.vals, strict=True):
        assert np.array_equal(cupy.asnumpy(a), cupy.asnumpy(b), equal_nan=True)
    for a, b in zip(cpu_state.counts, dev_state.counts, strict=True):
        assert np.array_equal(a, cupy.asnumpy(b))


def test_a_registered_indicator_runs_on_the_gpu_path() -> None:
    """A user's CPU kernel inside a GPU batch: its inputs go to the host and its column comes back."""
    cupy = gpu()
    from tests.unit.test_custom_indicator import wma_kernel  # noqa: F401  (registers wma_<n>)

    cols, lo, hi = stream([1, 2, 3], [300, 5, 200])
    fs = FeatureSet(["wma_10", "rsi_14"])
    cpu, _ = fs.compute(fs.empty_state(), np.arange(3), lo, hi, **cols)
    dev, _ = fs.compute(fs.empty_state(), np.arange(3), lo, hi, **{k: cupy.asarray(v) for k, v in cols.items()})
    for name in ("wma_10", "rsi_14"):
        assert_matches(f"{name} on the GPU path", cupy.asnumpy(dev[name]), cpu[name])

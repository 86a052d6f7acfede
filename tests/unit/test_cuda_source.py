"""The GPU kernels' CUDA source (gpu_kernels/indicators.cu) gives the CPU kernels' numbers.

Everywhere: the source is compiled for the host with the C++ compiler and run segment by segment (each GPU
thread in turn); it must equal the Numba kernels bit for bit and TA-Lib to 1e-9, under any cut of the stream.
Where CuPy sees a GPU: the same source through NVRTC on the device, against the CPU to 1e-9 relative (the
device's `log` may differ from the host's in the last bit).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu_kernels import cuda_indicators as cu
from gpu_kernels import indicators as ind
from gpu_kernels.features import DEFAULT_FEATURES, FeatureSet
from tests.unit.test_indicators import assert_matches, market, talib_features

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no C++ compiler to build the CUDA source for the host")


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Any:
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


@pytest.mark.parametrize("seed", range(4))
def test_the_cuda_source_equals_the_cpu_kernels_bit_for_bit_in_any_cut(host: Any, seed: int) -> None:
    """Interleaved symbols fed in random micro-batches: outputs and final state identical to the CPU's."""
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(1, 400, 6)]
    cols, lo, _hi = stream([seed * 10 + i for i in range(6)], lengths)
    names = (*DEFAULT_FEATURES, "sma_5", "ema_3", "rsi_2", "macd_3_7_2", "bb_upper_5_1.5", "atr_2", "vol_3")
    fs = FeatureSet(names)
    results = []
    for kernels in (ind, host):
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
            out, state = fs.compute(state, order, seg_lo, seg_hi, **batch, kernels=kernels)
            for name in names:
                pieces[name].append(np.column_stack([rows, out[name]]))
            done += take
        merged = {}
        for name in names:
            block = np.concatenate(pieces[name])
            merged[name] = block[np.argsort(block[:, 0], kind="stable"), 1]
        results.append((merged, state))
        rng = np.random.default_rng(seed)  # the same cuts for the second implementation
        rng.integers(1, 400, 6)
    (cpu, cpu_state), (cuda, cuda_state) = results
    for name in names:
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

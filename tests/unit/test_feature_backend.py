"""Backend auto|cpu|gpu of the feature kernels: a batch the GPU cannot compute is recomputed on the CPU and
counted, never lost; `auto` without a GPU is the CPU, quietly. (The GPU's own numbers are checked against
the CPU in test_cuda_source.py, on a real device where one is visible.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from gpu_kernels.features import FeatureSet
from processors.feature_backend import FeatureBackend
from processors.features import EngineConfig, FeatureEngine
from schemas.ticks import TickColumns
from tests.unit.test_indicators import market


def fallbacks() -> float:
    return REGISTRY.get_sample_value("streamquant_gpu_fallbacks_total", {"processor": "features"}) or 0.0


def active(backend: str) -> float | None:
    return REGISTRY.get_sample_value("streamquant_active_backend", {"processor": "features", "backend": backend})


def no_gpu() -> tuple[Any, str]:
    return None, "no CUDA device is visible"


class FailingDevice:
    """Stands in for CuPy on a device that runs out of memory on the first copy of every batch."""

    class OutOfMemoryError(Exception):
        pass

    def asarray(self, a: Any) -> Any:
        raise self.OutOfMemoryError("out of memory allocating 1,048,576 bytes")


def batch() -> tuple[Any, ...]:
    m = market(3, 300)
    return (np.array([0, 1]), np.array([0, 120]), np.array([120, 300]), m["high"], m["low"], m["close"], m["volume"])


def test_gpu_without_a_device_computes_on_the_cpu_and_counts_each_batch() -> None:
    fs = FeatureSet()
    backend = FeatureBackend("gpu", probe=no_gpu)
    want, want_state = fs.compute(fs.empty_state(), *batch())
    before = fallbacks()
    state = fs.empty_state()
    for _ in range(3):
        got, new_state = backend.compute(fs, state, *batch())
        for name in fs.names:
            assert np.array_equal(got[name], want[name], equal_nan=True)
    assert all(np.array_equal(a, b) for a, b in zip(new_state.vals, want_state.vals, strict=True))
    assert fallbacks() == before + 3
    assert backend.active == "cpu" and active("cpu") == 1 and active("gpu") == 0


def test_a_gpu_failing_mid_batch_is_recomputed_on_the_cpu() -> None:
    fs = FeatureSet()
    backend = FeatureBackend("auto", probe=lambda: (FailingDevice(), ""))
    assert backend.active == "gpu"
    want, _ = fs.compute(fs.empty_state(), *batch())
    before = fallbacks()
    got, _ = backend.compute(fs, fs.empty_state(), *batch())
    for name in fs.names:
        assert np.array_equal(got[name], want[name], equal_nan=True)
    assert fallbacks() == before + 1
    assert active("cpu") == 1 and active("gpu") == 0


@pytest.mark.parametrize("preference", ["auto", "cpu"])
def test_auto_and_cpu_without_a_gpu_are_the_cpu_without_fallbacks(preference: str) -> None:
    fs = FeatureSet()
    before = fallbacks()
    backend = FeatureBackend(preference, probe=no_gpu)
    backend.compute(fs, fs.empty_state(), *batch())
    assert backend.active == "cpu" and fallbacks() == before


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        FeatureBackend("tpu")


def test_the_engine_on_backend_gpu_publishes_what_the_cpu_does() -> None:
    """Here without a GPU: every batch falls back. With one: the device's numbers, equal to 1e-9."""
    rng = np.random.default_rng(1)
    n = 5000
    ts = np.sort(rng.integers(1_767_225_600_000, 1_767_225_600_000 + 600_000, n))
    nan = np.full(n, np.nan)
    ticks = TickColumns(symbol_codes=rng.integers(0, 3, n).astype(np.int32), symbols=("AAA", "BBB", "CCC"), ts=ts,
                        price=np.round(100 + np.cumsum(rng.standard_normal(n) * 0.05), 2),
                        size=rng.integers(1, 100, n).astype(np.float64), bid=nan, ask=nan,
                        exchange_codes=np.full(n, -1, np.int32), exchanges=())
    outputs = []
    for preference in ("cpu", "gpu"):
        engine = FeatureEngine(EngineConfig(intervals=("1s", "1m"), backend=preference))
        out, _ = engine.process(engine.empty_state(), ticks)
        outputs.append(out)
    for cpu, gpu in zip(outputs[0].closed, outputs[1].closed, strict=True):
        assert np.array_equal(cpu.close, gpu.close)
        assert len(cpu) > 20
        for name, values in cpu.features.items():
            np.testing.assert_allclose(gpu.features[name], values, rtol=1e-9, atol=1e-12, err_msg=name)


def test_the_forest_scorer_falls_back_to_the_cpu_and_uses_a_real_gpu_where_there_is_one() -> None:
    """predictions: a device that fails scores the batch on the CPU, counted; a real GPU gives the CPU's bits."""
    from sklearn.ensemble import RandomForestClassifier

    from gpu_kernels.forest_export import from_sklearn
    from processors.feature_backend import DeviceBackend, probe_forest_gpu
    from processors.registry import ForestScorer

    rng = np.random.default_rng(2)
    X = rng.standard_normal((400, 5))
    model = RandomForestClassifier(n_estimators=7, max_depth=5, random_state=0).fit(X, X[:, 0] + X[:, 1] > 0)
    forest = from_sklearn(model)
    want = model.predict_proba(X)[:, 1]
    before = REGISTRY.get_sample_value("streamquant_gpu_fallbacks_total", {"processor": "predictions"}) or 0.0
    failing = ForestScorer(forest, DeviceBackend("auto", "predictions", probe=lambda: (FailingDevice(), "")))
    np.testing.assert_allclose(failing.predict_up(X), want, rtol=0, atol=1e-12)
    assert REGISTRY.get_sample_value("streamquant_gpu_fallbacks_total", {"processor": "predictions"}) == before + 1
    real = DeviceBackend("auto", "predictions", probe=probe_forest_gpu)
    got = ForestScorer(forest, real).predict_up(X)
    np.testing.assert_array_equal(got, ForestScorer(forest).predict_up(X))  # GPU or not: the same bits (no exp)
    assert REGISTRY.get_sample_value("streamquant_active_backend",
                                     {"processor": "predictions", "backend": real.active}) == 1


class HostAsDevice:
    """Stands in for a working CuPy: 'device' arrays are NumPy arrays; counts the batches sent to it."""

    def __init__(self) -> None:
        self.batches = 0

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        self.batches += 1
        return np.asarray(a, dtype=dtype)

    def asnumpy(self, a: Any) -> Any:
        return np.asarray(a)


@pytest.mark.parametrize(("preference", "small_on_gpu"), [("auto", False), ("gpu", True)])
def test_auto_keeps_small_batches_on_the_cpu_uncounted(preference: str, small_on_gpu: bool) -> None:
    device = HostAsDevice()
    backend = FeatureBackend(preference, probe=lambda: (device, ""), min_rows=250)
    fs = FeatureSet()
    before = fallbacks()
    want, _ = fs.compute(fs.empty_state(), *batch())
    small = (np.array([0]), np.array([0]), np.array([120]), *(a[:120] for a in batch()[3:]))
    got, _ = backend.compute(fs, fs.empty_state(), *small)  # 120 bars < 250
    assert (device.batches > 0) is small_on_gpu and fallbacks() == before
    assert active("gpu" if small_on_gpu else "cpu") == 1
    for name, values in got.items():
        np.testing.assert_array_equal(values, want[name][:120])
    got, _ = backend.compute(fs, fs.empty_state(), *batch())  # 300 bars: the device
    assert device.batches > 0 and active("gpu") == 1 and fallbacks() == before
    for name, values in got.items():
        np.testing.assert_array_equal(values, want[name])

"""Where the feature kernels (and the forest kernel) run: `auto`, `cpu` or `gpu`, and a CPU recompute for every
batch the GPU fails.

`auto` uses the GPU when CuPy sees a device and the CUDA kernels compile, for batches of at least `min_rows`
rows (smaller ones are faster on the CPU); otherwise the CPU, quietly.
`gpu` insists: a batch the GPU cannot compute (no CuPy, no device, out of memory, a CUDA error) is
recomputed on the CPU and counted in `streamquant_gpu_fallbacks_total` — never lost, never failed. The
state stays on the host between batches (it is checkpointed to the changelog anyway); a GPU batch copies
its bars and state rows to the device and its columns and new state back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from gpu_kernels.features import FeatureSet, FeatureState
from processors import metrics as m

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "gpu")
T = TypeVar("T")


def probe_gpu(source: str = "indicators.cu", kernel: str = "sq_sma") -> tuple[Any, str]:
    """(cupy, "") when the GPU kernels of `gpu_kernels/<source>` can run here, else (None, why not)."""
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed (the `gpu` extra)"
    try:
        if int(cupy.cuda.runtime.getDeviceCount()) < 1:
            return None, "no CUDA device is visible"
        from gpu_kernels.cuda_indicators import _module

        _module(source).get_function(kernel)  # compiles the kernels once, here rather than in the first batch
    except Exception as err:  # a driver, runtime or NVRTC error: the device is not usable
        return None, f"the GPU kernels cannot run: {err}"
    return cupy, ""


def probe_forest_gpu() -> tuple[Any, str]:
    return probe_gpu("forest.cu", "sq_forest_f64")


class DeviceBackend:
    """Runs each batch on the GPU when the preference and the machine allow, else (or when it fails) on the CPU.

    `processor` labels the metrics: `streamquant_active_backend` follows the backend of the last batch, and
    `streamquant_gpu_fallbacks_total` counts the batches recomputed on the CPU under `gpu` or after a GPU error.
    """

    def __init__(self, preference: str = "auto", processor: str = "features", probe: Any = probe_gpu,
                 min_rows: int = 0) -> None:
        if preference not in BACKENDS:
            raise ValueError(f"unknown backend {preference!r} (auto, cpu or gpu)")
        self.preference = preference
        self.processor = processor
        self.min_rows = min_rows
        found: tuple[Any, str] = (None, "the cpu backend was chosen") if preference == "cpu" else probe()
        self._cupy, self.reason = found
        self._warned_at = 0.0
        if preference == "gpu" and self._cupy is None:
            log.warning("%s backend gpu: %s; every batch is computed on the CPU and counted as a GPU fallback",
                        processor, self.reason)
        self._show(self.active)

    @property
    def active(self) -> str:
        return "gpu" if self._cupy is not None else "cpu"

    def run(self, on_gpu: Callable[[Any], T], on_cpu: Callable[[], T], rows: int | None = None) -> T:
        """on_gpu(cupy) when the GPU is in use and it succeeds; else on_cpu(), counted where the GPU was wanted.

        Under `auto`, a batch of fewer than `min_rows` rows runs on the CPU, uncounted: below that size the
        copies and launches cost more than the CPU's whole computation (bench/RESULTS.md, GPU section)."""
        small = rows is not None and rows < self.min_rows and self.preference == "auto"
        if self._cupy is not None and not small:
            try:
                out = on_gpu(self._cupy)
                self._show("gpu")
                return out
            except Exception as err:  # out of memory, a CUDA or driver error: this batch goes to the CPU
                self._fallback(f"{type(err).__name__}: {err}")
        elif self.preference == "gpu":
            self._fallback(self.reason)
        self._show("cpu")
        return on_cpu()

    def _fallback(self, reason: str) -> None:
        m.GPU_FALLBACKS.labels(self.processor).inc()
        now = time.monotonic()
        if now - self._warned_at >= 60.0:  # one line a minute, not one per batch
            self._warned_at = now
            log.warning("%s: GPU batch recomputed on the CPU (%s)", self.processor, reason)

    def _show(self, backend: str) -> None:
        m.ACTIVE_BACKEND.labels(self.processor, backend).set(1)
        m.ACTIVE_BACKEND.labels(self.processor, "gpu" if backend == "cpu" else "cpu").set(0)


class FeatureBackend(DeviceBackend):
    """Runs `FeatureSet.compute` on the chosen backend for the feature engine."""

    def compute(self, fs: FeatureSet, state: FeatureState, seg_slot: np.ndarray, seg_lo: np.ndarray,
                seg_hi: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
                ) -> tuple[dict[str, np.ndarray], FeatureState]:
        arrays = (seg_slot, seg_lo, seg_hi, high, low, close, volume)
        return self.run(lambda cp: self._on_gpu(cp, fs, state, *arrays), lambda: fs.compute(state, *arrays),
                        rows=len(close))

    @staticmethod
    def _on_gpu(cp: Any, fs: FeatureSet, state: FeatureState, *arrays: np.ndarray
                ) -> tuple[dict[str, np.ndarray], FeatureState]:
        device = [cp.asarray(a) for a in arrays]
        out, new = fs.compute(state, *device)
        host = {name: cp.asnumpy(col) for name, col in out.items()}
        return host, FeatureState(tuple(cp.asnumpy(c) for c in new.counts), tuple(cp.asnumpy(v) for v in new.vals))

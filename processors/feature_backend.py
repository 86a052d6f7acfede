"""Where the feature kernels run: `auto`, `cpu` or `gpu`, and a CPU recompute for every batch the GPU fails.

`auto` uses the GPU when CuPy sees a device and the CUDA kernels compile; otherwise the CPU, quietly.
`gpu` insists: a batch the GPU cannot compute (no CuPy, no device, out of memory, a CUDA error) is
recomputed on the CPU and counted in `streamquant_gpu_fallbacks_total` — never lost, never failed. The
state stays on the host between batches (it is checkpointed to the changelog anyway); a GPU batch copies
its bars and state rows to the device and its columns and new state back.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from gpu_kernels.features import FeatureSet, FeatureState
from processors import metrics as m

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "gpu")


def probe_gpu() -> tuple[Any, str]:
    """(cupy, "") when the GPU kernels can run here, else (None, why not)."""
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed (the `gpu` extra)"
    try:
        if int(cupy.cuda.runtime.getDeviceCount()) < 1:
            return None, "no CUDA device is visible"
        from gpu_kernels.cuda_indicators import _module

        _module().get_function("sq_sma")  # compiles the kernels once, here rather than in the first batch
    except Exception as err:  # a driver, runtime or NVRTC error: the device is not usable
        return None, f"the GPU kernels cannot run: {err}"
    return cupy, ""


class FeatureBackend:
    """Runs `FeatureSet.compute` on the chosen backend for the feature engine."""

    def __init__(self, preference: str = "auto", processor: str = "features", probe: Any = probe_gpu) -> None:
        if preference not in BACKENDS:
            raise ValueError(f"unknown backend {preference!r} (auto, cpu or gpu)")
        self.preference = preference
        self.processor = processor
        found: tuple[Any, str] = (None, "the cpu backend was chosen") if preference == "cpu" else probe()
        self._cupy, self.reason = found
        self._warned_at = 0.0
        if preference == "gpu" and self._cupy is None:
            log.warning("backend gpu: %s; every batch is computed on the CPU and counted as a GPU fallback",
                        self.reason)
        self._show("gpu" if self._cupy is not None else "cpu")

    @property
    def active(self) -> str:
        return "gpu" if self._cupy is not None else "cpu"

    def compute(self, fs: FeatureSet, state: FeatureState, seg_slot: np.ndarray, seg_lo: np.ndarray,
                seg_hi: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
                ) -> tuple[dict[str, np.ndarray], FeatureState]:
        if self._cupy is not None:
            try:
                out = self._on_gpu(fs, state, seg_slot, seg_lo, seg_hi, high, low, close, volume)
                self._show("gpu")
                return out
            except Exception as err:  # out of memory, a CUDA or driver error: this batch goes to the CPU
                self._fallback(f"{type(err).__name__}: {err}")
        elif self.preference == "gpu":
            self._fallback(self.reason)
        self._show("cpu")
        return fs.compute(state, seg_slot, seg_lo, seg_hi, high, low, close, volume)

    def _on_gpu(self, fs: FeatureSet, state: FeatureState, *arrays: np.ndarray
                ) -> tuple[dict[str, np.ndarray], FeatureState]:
        cp = self._cupy
        assert cp is not None
        device = [cp.asarray(a) for a in arrays]
        out, new = fs.compute(state, *device)
        host = {name: cp.asnumpy(col) for name, col in out.items()}
        return host, FeatureState(tuple(cp.asnumpy(c) for c in new.counts), tuple(cp.asnumpy(v) for v in new.vals))

    def _fallback(self, reason: str) -> None:
        m.GPU_FALLBACKS.labels(self.processor).inc()
        now = time.monotonic()
        if now - self._warned_at >= 60.0:  # one line a minute, not one per batch
            self._warned_at = now
            log.warning("GPU batch recomputed on the CPU (%s)", reason)

    def _show(self, backend: str) -> None:
        m.ACTIVE_BACKEND.labels(self.processor, backend).set(1)
        m.ACTIVE_BACKEND.labels(self.processor, "gpu" if backend == "cpu" else "cpu").set(0)

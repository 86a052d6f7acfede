"""GPU utilization and memory in use, read from NVML at each scrape and exported next to a processor's metrics.

NVML comes from `nvidia-ml-py` (the `gpu` extra). Where it is not installed, or finds no driver or no device,
nothing is registered and nothing fails: a CPU host simply has no GPU series.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LABELS = ("gpu", "uuid", "name")  # NVML index, the device's UUID (stable across hosts' orderings), its model


class NvmlCollector(Collector):
    """One NVML read per device and scrape. A device whose read fails is left out of that scrape and counted
    (`streamquant_gpu_read_errors_total`), so one lost GPU never breaks the processor's whole /metrics page."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._lock = threading.Lock()
        self._errors = 0
        self.devices: list[tuple[Any, list[str]]] = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            labels = [str(index), _text(nvml.nvmlDeviceGetUUID(handle)), _text(nvml.nvmlDeviceGetName(handle))]
            self.devices.append((handle, labels))

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily("streamquant_gpu_utilization_ratio",
                              "Share of the last sample period in which a kernel ran on the GPU (0-1)", labels=LABELS),
            GaugeMetricFamily("streamquant_gpu_memory_used_bytes", "GPU memory in use", labels=LABELS),
            GaugeMetricFamily("streamquant_gpu_memory_total_bytes", "GPU memory installed", labels=LABELS),
            CounterMetricFamily("streamquant_gpu_read_errors_total", "NVML reads that failed (device left out)"),
        )

    def describe(self) -> list[Metric]:
        # Names only: registering must not call NVML.
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        utilization, used, total, errors = self._families()
        nvml = self._nvml
        for handle, labels in self.devices:
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError as err:
                with self._lock:
                    self._errors += 1
                log.warning("NVML read of GPU %s failed: %s", labels[0], err)
                continue
            utilization.add_metric(labels, float(rates.gpu) / 100.0)
            used.add_metric(labels, float(memory.used))
            total.add_metric(labels, float(memory.total))
        errors.add_metric([], float(self._errors))
        yield from (utilization, used, total, errors)


def register_gpu_metrics(registry: CollectorRegistry = REGISTRY, nvml: Any = None) -> NvmlCollector | None:
    """Registers an `NvmlCollector` where NVML answers and sees a device; returns it, or None where not.

    `nvml` is the `pynvml` module (imported here when not given; tests pass a fake)."""
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
        collector = NvmlCollector(nvml)
    except nvml.NVMLError as err:  # no driver, no library, no permission: a host without GPU metrics
        log.info("no GPU metrics: NVML says %s", err)
        return None
    if not collector.devices:
        return None
    registry.register(collector)
    return collector


def _text(value: str | bytes) -> str:
    # nvidia-ml-py before 11.515 returned bytes
    return value.decode() if isinstance(value, bytes) else value

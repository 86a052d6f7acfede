"""The NVML collector's logic against a fake `pynvml` module: what it exports per device, that it reads at each
scrape, that a failing device or an absent NVML never breaks a processor's /metrics page."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from processors.gpu_metrics import NvmlCollector, register_gpu_metrics

GIB = 1024**3


class FakeNVMLError(Exception):
    pass


@dataclass
class FakeDevice:
    uuid: str
    name: str | bytes
    utilization: int  # percent, as NVML reports it
    used: int
    total: int
    broken: bool = False


class FakeNvml:
    """The slice of the pynvml module the collector uses."""

    NVMLError = FakeNVMLError

    def __init__(self, devices: list[FakeDevice], init_error: str | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.reads = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise FakeNVMLError(self.init_error)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        return self.devices[index]

    def nvmlDeviceGetUUID(self, handle: FakeDevice) -> str:
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeDevice) -> str | bytes:
        return handle.name

    def nvmlDeviceGetUtilizationRates(self, handle: FakeDevice) -> Any:
        self.reads += 1
        if handle.broken:
            raise FakeNVMLError("GPU is lost")
        return type("Utilization", (), {"gpu": handle.utilization, "memory": 0})()

    def nvmlDeviceGetMemoryInfo(self, handle: FakeDevice) -> Any:
        return type("Memory", (), {"used": handle.used, "total": handle.total, "free": handle.total - handle.used})()


def two_gpus() -> FakeNvml:
    return FakeNvml([FakeDevice("GPU-aaaa", "NVIDIA H100 80GB HBM3", 37, 12 * GIB, 80 * GIB),
                     FakeDevice("GPU-bbbb", b"NVIDIA H100 80GB HBM3", 0, 1 * GIB, 80 * GIB)])


def sample(registry: CollectorRegistry, name: str, gpu: str | None = None) -> float | None:
    labels = None
    if gpu is not None:
        uuid = {"0": "GPU-aaaa", "1": "GPU-bbbb"}[gpu]
        labels = {"gpu": gpu, "uuid": uuid, "name": "NVIDIA H100 80GB HBM3"}
    return registry.get_sample_value(name, labels)


def test_exports_utilization_and_memory_of_every_device() -> None:
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry, nvml=two_gpus()) is not None
    assert sample(registry, "streamquant_gpu_utilization_ratio", "0") == pytest.approx(0.37)
    assert sample(registry, "streamquant_gpu_utilization_ratio", "1") == 0.0
    assert sample(registry, "streamquant_gpu_memory_used_bytes", "0") == 12 * GIB
    assert sample(registry, "streamquant_gpu_memory_used_bytes", "1") == 1 * GIB  # a bytes name is decoded
    assert sample(registry, "streamquant_gpu_memory_total_bytes", "1") == 80 * GIB
    assert sample(registry, "streamquant_gpu_read_errors_total") == 0
    text = generate_latest(registry).decode()
    assert "# TYPE streamquant_gpu_memory_used_bytes gauge" in text


def test_reads_at_each_scrape_and_not_at_registration() -> None:
    nvml = two_gpus()
    registry = CollectorRegistry()
    register_gpu_metrics(registry, nvml=nvml)
    assert nvml.reads == 0
    nvml.devices[0].utilization = 90
    nvml.devices[0].used = 70 * GIB
    assert sample(registry, "streamquant_gpu_utilization_ratio", "0") == pytest.approx(0.9)
    assert sample(registry, "streamquant_gpu_memory_used_bytes", "0") == 70 * GIB
    assert nvml.reads > 0


def test_a_failing_device_is_left_out_and_counted_without_breaking_the_scrape() -> None:
    nvml = two_gpus()
    registry = CollectorRegistry()
    register_gpu_metrics(registry, nvml=nvml)
    nvml.devices[1].broken = True
    text = generate_latest(registry).decode()
    assert 'gpu="0"' in text and 'gpu="1"' not in text
    assert sample(registry, "streamquant_gpu_read_errors_total") == 2  # this read is the second scrape
    assert sample(registry, "streamquant_gpu_memory_used_bytes", "0") == 12 * GIB


@pytest.mark.parametrize("nvml", [FakeNvml([]), FakeNvml([], init_error="NVML Shared Library Not Found"),
                                  FakeNvml([], init_error="Driver Not Loaded")],
                         ids=["no device", "no library", "no driver"])
def test_nothing_is_registered_where_nvml_sees_no_gpu(nvml: FakeNvml) -> None:
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry, nvml=nvml) is None
    assert "streamquant_gpu" not in generate_latest(registry).decode()


def test_nothing_is_registered_where_pynvml_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry) is None
    assert generate_latest(registry) == b""


def test_describes_its_series_without_calling_nvml() -> None:
    nvml = two_gpus()
    collector = NvmlCollector(nvml)
    assert {f.name for f in collector.describe()} == {
        "streamquant_gpu_utilization_ratio", "streamquant_gpu_memory_used_bytes",
        "streamquant_gpu_memory_total_bytes", "streamquant_gpu_read_errors"}  # counters' family names drop _total
    assert nvml.reads == 0

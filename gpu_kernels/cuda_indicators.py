"""The indicator kernels on the GPU: `indicators.cu` through CuPy, with the signatures of `gpu_kernels.indicators`.

`GPU.sma(...)` etc. take CuPy arrays where the CPU kernels take NumPy ones (the state `counts`/`vals` and the
outputs are written in place, like the CPU kernels) and runs one GPU thread per segment. The recursions
(EMA, Wilder smoothing, the sliding variance) are sequential along a series, so a series is one thread's
loop; the parallelism is across series — hundreds to thousands of symbol × interval pairs per batch.

The source is also compiled for the host (`host_library`, `host_kernels`) with the C++ compiler: the tests
run that build segment by segment against the CPU kernels and TA-Lib, so the GPU code's logic is checked
where no GPU is.
Both builds keep `a * b + c` unfused (NVRTC `--fmad=false`, GCC `-ffp-contract=off`), as the CPU kernels do.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

THREADS = 128

DEVICE_PRELUDE = """\
#define SQ_KERNEL extern "C" __global__ void
#define SQ_DEVICE __device__ static inline
#define SQ_THREAD ((long long)blockIdx.x * blockDim.x + threadIdx.x)
#define SQ_NAN __longlong_as_double(0x7ff8000000000000LL)
"""

HOST_PRELUDE = """\
#include <math.h>
extern "C" { long long sq_thread = 0; }
#define SQ_KERNEL extern "C" void
#define SQ_DEVICE static inline
#define SQ_THREAD sq_thread
#define SQ_NAN NAN
"""

INDICATORS = "indicators.cu"
Launch = Callable[..., None]  # launch(kernel name, number of threads, *kernel arguments)


def source(name: str = INDICATORS) -> str:
    return resources.files("gpu_kernels").joinpath(name).read_text()


@functools.cache
def _module(name: str = INDICATORS) -> Any:
    import cupy

    return cupy.RawModule(code=DEVICE_PRELUDE + source(name), options=("--std=c++14", "--fmad=false"))


def cupy_launcher(source_name: str) -> Launch:
    """Launches the kernels of `gpu_kernels/<source_name>` on the current CUDA device, THREADS per block."""

    def launch(name: str, threads: int, *args: Any) -> None:
        if threads == 0:
            return
        blocks = (threads + THREADS - 1) // THREADS
        _module(source_name).get_function(name)((blocks,), (THREADS,), args)

    return launch


class Kernels:
    """The kernels of `indicators.cu` with the signatures of `gpu_kernels.indicators`, over some launcher."""

    def __init__(self, launch: Launch) -> None:
        self._launch = launch

    def _go(self, name: str, seg_slot: Any, seg_lo: Any, seg_hi: Any, inputs: tuple[Any, ...], counts: Any,
            vals: Any, outputs: tuple[Any, ...]) -> None:
        self._launch(name, len(seg_slot), seg_slot, seg_lo, seg_hi, np.int64(len(seg_slot)), *inputs, counts, vals,
                     np.int64(vals.shape[1]), *outputs)

    def sma(self, seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
        self._go("sq_sma", seg_slot, seg_lo, seg_hi, (x, np.int64(n)), counts, vals, (out,))

    def ema(self, seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
        self._go("sq_ema", seg_slot, seg_lo, seg_hi, (x, np.int64(n)), counts, vals, (out,))

    def rsi(self, seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
        self._go("sq_rsi", seg_slot, seg_lo, seg_hi, (x, np.int64(n)), counts, vals, (out,))

    def macd(self, seg_slot, seg_lo, seg_hi, x, fast, slow, signal, counts, vals, out):
        self._go("sq_macd", seg_slot, seg_lo, seg_hi, (x, np.int64(fast), np.int64(slow), np.int64(signal)),
                 counts, vals, (out,))

    def bbands(self, seg_slot, seg_lo, seg_hi, x, n, k, counts, vals, out):
        self._go("sq_bbands", seg_slot, seg_lo, seg_hi, (x, np.int64(n), np.float64(k)), counts, vals, (out,))

    def atr(self, seg_slot, seg_lo, seg_hi, high, low, close, n, counts, vals, out):
        self._go("sq_atr", seg_slot, seg_lo, seg_hi, (high, low, close, np.int64(n)), counts, vals, (out,))

    def obv(self, seg_slot, seg_lo, seg_hi, close, volume, counts, vals, out):
        self._go("sq_obv", seg_slot, seg_lo, seg_hi, (close, volume), counts, vals, (out,))

    def logret_std(self, seg_slot, seg_lo, seg_hi, close, n, counts, vals, out_logret, out_std):
        self._go("sq_logret_std", seg_slot, seg_lo, seg_hi, (close, np.int64(n)), counts, vals, (out_logret, out_std))

    def highest(self, seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
        self._go("sq_extreme", seg_slot, seg_lo, seg_hi, (x, np.int64(n), np.float64(1.0)), counts, vals, (out,))

    def lowest(self, seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
        self._go("sq_extreme", seg_slot, seg_lo, seg_hi, (x, np.int64(n), np.float64(-1.0)), counts, vals, (out,))


GPU = Kernels(cupy_launcher(INDICATORS))


# ---------------------------------------------------------------------------------------------- host build


def host_launcher(library: Path) -> Launch:
    """Kernels of a source compiled for the host (`host_library`), running the GPU threads one after another:
    for checking the CUDA source where there is no GPU, not for speed."""
    lib = ctypes.CDLL(str(library))
    thread = ctypes.c_longlong.in_dll(lib, "sq_thread")

    def launch(name: str, threads: int, *args: Any) -> None:
        fn = getattr(lib, name)
        converted = [_host_arg(a) for a in args]
        for g in range(threads):
            thread.value = g
            fn(*converted)

    return launch


def host_kernels(library: Path) -> Kernels:
    """`indicators.cu` built for the host: the GPU kernels' logic, thread by thread, on NumPy arrays."""
    return Kernels(host_launcher(library))


def _host_arg(a: Any) -> Any:
    if isinstance(a, np.ndarray):
        if not a.flags.c_contiguous:
            raise ValueError("host kernels need C-contiguous arrays")
        return ctypes.c_void_p(a.ctypes.data)
    if isinstance(a, np.floating):
        return ctypes.c_double(float(a))
    return ctypes.c_longlong(int(a))


def host_library(directory: Path, compiler: str | None = None, source_name: str = INDICATORS) -> Path:
    """Compiles `gpu_kernels/<source_name>` with the host C++ compiler into `directory`; returns the library."""
    cxx = compiler or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    stem = source_name.removesuffix(".cu")
    src = directory / f"{stem}_host.cpp"
    lib = directory / f"libsq_{stem}.so"
    src.write_text(HOST_PRELUDE + source(source_name))
    done = subprocess.run([cxx, "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-x", "c++", str(src), "-o", str(lib)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"compiling {source_name} for the host failed:\n{done.stderr}")
    return lib

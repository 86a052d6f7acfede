"""What the GPU benchmarks share: CuPy with a visible device, or one line and a non-zero exit."""

from __future__ import annotations

import sys
from types import ModuleType


def require_cupy() -> ModuleType:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device is visible")
    except Exception as err:
        sys.exit(f"error: the GPU benchmark needs CuPy and a GPU ({err})")
    return cupy

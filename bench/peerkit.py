"""What the benchmark and its peer runs share, with NumPy as the only import (the peers' venvs lack ours)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def save(messages: Sequence[bytes], path: Path) -> None:
    """Message values, each prefixed by its length (4 bytes, little-endian)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for m in messages:
            f.write(struct.pack("<I", len(m)))
            f.write(m)


def load(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def columns_from_rows(rows: list[dict[str, Any]]) -> None:
    """What a per-message consumer does after parsing: build the same columns StreamQuant hands over."""
    np.array([r["ts"] for r in rows], dtype=np.int64)
    np.array([r["price"] for r in rows], dtype=np.float64)
    np.array([r["size"] for r in rows], dtype=np.float64)
    np.array([r.get("bid", np.nan) for r in rows], dtype=np.float64)
    np.array([r.get("ask", np.nan) for r in rows], dtype=np.float64)
    [r["symbol"] for r in rows]
    [r.get("exchange") for r in rows]

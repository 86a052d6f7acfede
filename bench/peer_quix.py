"""Peer run, in the Quix Streams venv: its JSON deserializer per message, then columns (no validation).

Usage: python bench/peer_quix.py MESSAGES_FILE BATCH REPEATS  -> prints one JSON line of results.
Runs standalone (no StreamQuant import) because Quix pins older confluent-kafka and pydantic.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from quixstreams.models import MessageField, SerializationContext
from quixstreams.models.serializers import JSONDeserializer


def load(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def main() -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    messages = load(Path(sys.argv[1]))
    batch, repeats = int(sys.argv[2]), int(sys.argv[3])
    deserialize = JSONDeserializer()
    ctx = SerializationContext(topic="ticks", field=MessageField.VALUE)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(messages), batch):
            rows = [deserialize(m, ctx) for m in messages[start : start + batch]]
            np.array([r["ts"] for r in rows], dtype=np.int64)
            np.array([r["price"] for r in rows], dtype=np.float64)
            np.array([r["size"] for r in rows], dtype=np.float64)
            np.array([r.get("bid", np.nan) for r in rows], dtype=np.float64)
            np.array([r.get("ask", np.nan) for r in rows], dtype=np.float64)
            [r["symbol"] for r in rows]
            [r.get("exchange") for r in rows]
        best = max(best, len(messages) / (time.perf_counter() - started))
    print(json.dumps({"name": f"Quix Streams {version('quixstreams')} JSONDeserializer + columns",
                      "ticks_per_s": best}))


if __name__ == "__main__":
    main()

"""Peer run, in the Quix Streams venv: its JSON deserializer per message, then columns (no validation).

Usage: python bench/peer_quix.py MESSAGES_FILE BATCH REPEATS  -> prints one JSON line of results.
Runs standalone (no StreamQuant import) because Quix pins older confluent-kafka and pydantic.
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

from peerkit import columns_from_rows, load  # bench/ is on sys.path when run as a script
from quixstreams.models import MessageField, SerializationContext
from quixstreams.models.serializers import JSONDeserializer


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
            columns_from_rows([deserialize(m, ctx) for m in messages[start : start + batch]])
        best = max(best, len(messages) / (time.perf_counter() - started))
    print(json.dumps({"name": f"Quix Streams {version('quixstreams')} JSONDeserializer + columns",
                      "ticks_per_s": best}))


if __name__ == "__main__":
    main()

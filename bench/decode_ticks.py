"""Decode benchmark: JSON tick messages to columns on one core, StreamQuant against the peers, one run.

    python -m bench.decode_ticks [--n 1000000] [--batch 10000] [--peers-python .venv-bench/bin/python]

Every contender starts from the same list of message values (what confluent-kafka's consume() hands
over) and ends with NumPy columns for ts, price, size, bid, ask plus symbols and exchanges. StreamQuant
also validates every field (the peers validate nothing), and keeps the input order.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from bench.peerkit import columns_from_rows, save
from bench.tickdata import make_messages
from schemas.tick_decoder import TickDecoder
from schemas.ticks import decode_tick

OUT = Path(__file__).parent / "out"


def pin_one_core() -> int:
    core = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {core})
    return core


def per_message(loads: Callable[[bytes], dict]) -> Callable[[list[bytes]], None]:  # type: ignore[type-arg]
    """The loop a confluent-kafka user writes: parse each message, then build columns (no validation)."""

    def run(values: list[bytes]) -> None:
        columns_from_rows([loads(v) for v in values])

    return run


def reference_loop(values: list[bytes]) -> None:
    """StreamQuant's own per-message reference decoder (full validation), for scale."""
    ticks = [decode_tick(v) for v in values]
    np.array([t.ts for t in ticks], dtype=np.int64)
    np.array([t.price for t in ticks], dtype=np.float64)


def measure(fn: Callable[[list[bytes]], object], messages: list[bytes], batch: int, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(messages), batch):
            fn(messages[start : start + batch])
        best = max(best, len(messages) / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers-python", type=Path, default=None,
                        help="interpreter of a venv with quixstreams (make bench creates .venv-bench)")
    args = parser.parse_args()
    core = pin_one_core()
    clean = make_messages(args.n)
    dirty = make_messages(args.n, bad_every=1000)  # 0.1% bad messages, spread through the stream
    decoder = TickDecoder()
    decoder.decode(clean[:1000])

    results: list[tuple[str, float]] = [
        ("StreamQuant TickDecoder (validated columns)", measure(decoder.decode, clean, args.batch, args.repeats)),
        ("StreamQuant TickDecoder, 0.1% bad messages", measure(decoder.decode, dirty, args.batch, args.repeats)),
        ("orjson.loads per message + columns", measure(per_message(orjson.loads), clean, args.batch, args.repeats)),
        ("json.loads per message + columns", measure(per_message(json.loads), clean, args.batch, args.repeats)),
        ("StreamQuant reference decoder per message", measure(reference_loop, clean[: args.n // 5], args.batch, 1)),
    ]
    if args.peers_python is not None:
        data_file = OUT / "ticks.bin"
        save(clean, data_file)
        line = subprocess.run([str(args.peers_python), str(Path(__file__).parent / "peer_quix.py"), str(data_file),
                               str(args.batch), str(args.repeats)], capture_output=True, text=True, check=True)
        peer = json.loads(line.stdout.strip().splitlines()[-1])
        results.append((peer["name"], peer["ticks_per_s"]))

    ours = results[0][1]
    print(f"\n{args.n:,} JSON ticks, batches of {args.batch:,}, one core (cpu {core}), best of {args.repeats}; "
          f"{platform.python_implementation()} {platform.python_version()}\n")
    print("| decoder | ticks/s | StreamQuant ÷ this |")
    print("| --- | ---: | ---: |")
    for name, rate in results:
        print(f"| {name} | {rate:,.0f} | {ours / rate:.2f}× |")
    OUT.mkdir(exist_ok=True)
    (OUT / "decode.json").write_text(json.dumps({name: rate for name, rate in results}, indent=2))


if __name__ == "__main__":
    main()

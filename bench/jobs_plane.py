"""Jobs through Kafka: 20 concurrent backtests through the job plane, and the result cache on a replayed mix.

Needs the local stack (`make up`). Starts `streamquant run jobs` on fresh topics, then
1. submits 20 distinct trend-following backtests (1000 days × 100 symbols, a 4-set grid each) at once and
   measures the time from the first command written to the last terminal status read (read_committed);
2. replays a mix of repeated requests — `--requests` commands drawn from `--distinct` configurations with
   Zipf-like popularity (a few popular backtests asked for again and again, a long tail asked once) — and
   reports the share answered without running — from the cache tiers, or by sharing the result of an identical
   job still running (a burst of identical requests runs once) — from the statuses and the plane's counters.

    python -m bench.jobs_plane [--requests 300 --distinct 40 --rate 20]

The mix is replayed twice on fresh data: all at once (identical requests in flight share one run), and paced
(later repeats find the result in the cache tiers).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

BOOTSTRAP = os.environ.get("STREAMQUANT_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "rejected"}


def command(job_id: str, fast: int, slow: int, seed: int) -> dict[str, Any]:
    return {"job_id": job_id, "type": "backtest", "strategy": "trend_following",
            "params": {"fast": [fast, fast + 2], "slow": [slow, slow + 10], "ma": "sma"},
            "universe": [f"S{i:03d}" for i in range(100)], "start": "2020-01-01", "end": "2023-10-31",
            "interval": "1d", "data": {"source": "synthetic", "seed": seed}, "fees_bps": 5}


def wait_all(consumer: Consumer, ids: set[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for m in consumer.consume(1000, 0.1):
            if m.error() is None:
                s = orjson.loads(m.value())  # type: ignore[arg-type]
                if s["job_id"] in ids:
                    last[s["job_id"]] = s
        if all(j in last and last[j]["state"] in TERMINAL for j in ids):
            return last
    raise SystemExit(f"jobs still running after {timeout_s:.0f}s")


def _stats() -> dict[str, Any]:
    with urllib.request.urlopen("http://127.0.0.1:6099/cache/stats", timeout=5) as r:
        stats: dict[str, Any] = orjson.loads(r.read())
    return stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--distinct", type=int, default=40)
    ap.add_argument("--rate", type=float, default=20.0, help="requests/s of the paced replay")
    args = ap.parse_args()
    run = uuid.uuid4().hex[:8]
    base = int(run[:6], 16)  # fresh data each run: the Redis tier outlives runs
    work = Path(tempfile.mkdtemp(prefix="sq-bench-jobs-"))
    env = {**os.environ, "STREAMQUANT_TOPICS_PREFIX": f"bj-{run}.", "STREAMQUANT_JOBS_APP_ID": f"bj-{run}",
           "STREAMQUANT_JOBS_ARTIFACT_ROOT": str(work / "artifacts"), "STREAMQUANT_JOBS_CACHE_DIR": str(work / "c"),
           "STREAMQUANT_METRICS_PORT": "0", "STREAMQUANT_JOBS_WEB_PORT": "6099",
           "STREAMQUANT_KAFKA_BOOTSTRAP": BOOTSTRAP}
    sq = [sys.executable, "-m", "streamquant"]
    subprocess.run([*sq, "topics", "create"], env=env, check=True, capture_output=True)
    plane = subprocess.Popen([*sq, "run", "jobs"], env=env, stdout=(work / "plane.log").open("wb"),
                             stderr=subprocess.STDOUT)
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "partitioner": "murmur2_random"})
    status = f"bj-{run}.jobs.status"
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"bj-{run}", "isolation.level": "read_committed",
                         "auto.offset.reset": "earliest"})
    try:
        time.sleep(8)  # the plane joins its group
        parts = consumer.list_topics(status, timeout=10).topics[status].partitions
        consumer.assign([TopicPartition(status, p, 0) for p in parts])
        # Warm the worker processes (imports, compiled kernels) with one job first.
        producer.produce(f"bj-{run}.backtest.commands", orjson.dumps(command("warm", 7, 40, base)), key=b"warm")
        producer.flush()
        wait_all(consumer, {"warm"}, 300)

        for round_, label in ((0, "16 worker processes starting"), (1, "the same workers again")):
            cmds = [command(f"c20-{round_}-{i}", 5 + i, 40 + i, base + 1 + i + 50 * round_) for i in range(20)]
            started = time.perf_counter()
            for c in cmds:
                producer.produce(f"bj-{run}.backtest.commands", orjson.dumps(c), key=c["job_id"].encode())
            producer.flush()
            done = wait_all(consumer, {c["job_id"] for c in cmds}, 900)
            took = time.perf_counter() - started
            states = sorted({s["state"] for s in done.values()})
            print(f"| 20 concurrent backtests (1000 days × 100 symbols × 4 sets each), {label} | {took:.1f} s to all "
                  f"done | states: {', '.join(states)} |")

        rnd = random.Random(7)
        weights = [1 / (k + 1) ** 1.1 for k in range(args.distinct)]
        picks = rnd.choices(range(args.distinct), weights=weights, k=args.requests)
        for label, rate, offset in (("at once", None, 100), (f"paced at {args.rate:g}/s", args.rate, 200)):
            mix = [command(f"mix-{offset}-{i}", 3 + k, 60 + k, base + offset + k) for i, k in enumerate(picks)]
            before = _stats()
            started = time.perf_counter()
            for i, c in enumerate(mix):
                producer.produce(f"bj-{run}.backtest.commands", orjson.dumps(c), key=c["job_id"].encode())
                if rate:
                    producer.flush()
                    time.sleep(max(started + (i + 1) / rate - time.perf_counter(), 0))
            producer.flush()
            done = wait_all(consumer, {c["job_id"] for c in mix}, 1800)
            took = time.perf_counter() - started
            after = _stats()
            cached = sum(1 for s in done.values() if s.get("backend") == "cache")
            shared = sum(1 for s in done.values() if "shared the result" in (s.get("reason") or ""))
            tiers = ", ".join(f"{t.upper()} {after['tiers'][t]['hits'] - before['tiers'][t]['hits']}"
                              for t in after["tiers"])
            print(f"| replayed mix {label}: {args.requests} requests over {args.distinct} distinct backtests "
                  f"(Zipf 1.1) | {took:.1f} s | answered without running: {cached}/{args.requests} = "
                  f"{cached / args.requests:.1%} ({shared} shared a running twin's result; cache tier hits: "
                  f"{tiers}) |")
        print(f"(the most any cache can answer: {1 - len(set(picks)) / args.requests:.1%} — "
              f"{len(set(picks))} distinct configurations were asked for)")
    finally:
        plane.terminate()
        try:
            plane.wait(60)
        except subprocess.TimeoutExpired:
            plane.kill()
        consumer.close()


if __name__ == "__main__":
    main()

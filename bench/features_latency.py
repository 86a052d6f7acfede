"""Feature-processor latency on the local broker: a steady tick rate in, the time until each bar's feature
vector is readable downstream (read_committed).

    python -m bench.features_latency [--rate 10000] [--seconds 40] [--max-wait-ms 10]

A bar [b, b + 1 s) closes when the first tick at or after b + 1 s reaches its partition. The producer
(`streamquant produce ticks`, paced to the rate) stamps each tick with its due time, so that tick leaves
the producer at wall time ≈ b + 1 s (a few ms later at most: its pacing granularity, which this
measure therefore includes). Latency of a 1 s feature vector = time it is read here − (b + 1 s).

A second measure starts the clock where the issue's definition does, when the closing tick was produced: this
reader also reads `ticks` and takes, for each partition and second, the Kafka timestamp (CreateTime: set by
the producing client when it is handed the tick) of the partition's first tick at or after b + 1 s, the tick
that moves that partition's watermark past the bar. This leaves out the producer's pacing; its linger and
the trip to the broker stay in.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer

from streamquant.kafka_io import admin_client
from streamquant.settings import TopicSettings, load_settings
from streams.topics import TopicCatalog, ensure_topics

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--max-wait-ms", type=int, default=None, help="processor batch wait (default: settings)")
    parser.add_argument("--warmup", type=float, default=5)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    prefix = f"lat-{run}."
    settings = load_settings(topics=TopicSettings(prefix=prefix, data_partitions=8))
    catalog = TopicCatalog(settings.topics.catalog_options())
    admin = admin_client(settings.kafka)
    ensure_topics(admin, catalog.specs())
    # The processor's metrics are scraped at the end for its batch timings.
    env = {**os.environ, "STREAMQUANT_TOPICS_PREFIX": prefix, "STREAMQUANT_METRICS_PORT": "9479",
           "STREAMQUANT_FEATURES_GROUP": f"lat-{run}", "STREAMQUANT_FEATURES_INSTANCE_ID": "lat"}
    if args.max_wait_ms is not None:
        env["STREAMQUANT_FEATURES_MAX_WAIT_MS"] = str(args.max_wait_ms)
    cli = [sys.executable, "-m", "streamquant"]
    consumer = Consumer({**settings.kafka.client_config(), "group.id": f"lat-read-{run}",
                         "isolation.level": "read_committed", "auto.offset.reset": "latest",
                         "fetch.wait.max.ms": 5})
    consumer.subscribe([catalog.name("features"), catalog.name("ticks")])
    processor = subprocess.Popen([*cli, "run", "features"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    latencies: list[float] = []
    vectors: list[tuple[str, int, float]] = []  # (symbol, bar start, read at ms)
    partition_of: dict[str, int] = {}
    newest_second: dict[int, int] = {}
    second_opened: dict[tuple[int, int], int] = {}  # (ticks partition, second) -> CreateTime of its first tick
    try:
        time.sleep(4)  # processor up and assigned
        producer = subprocess.Popen([*cli, "produce", "ticks", "--symbols", str(args.symbols), "--rate",
                                     str(args.rate), "--seconds", str(args.seconds)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.time()
        while producer.poll() is None or time.time() - started < args.seconds + 3:
            # poll returns with the first message; consume(n, 0) then takes what is already fetched. (A plain
            # consume(1000, 0.05) waits for 1,000 messages or the 50 ms, which it added to the measure.)
            first = consumer.poll(0.05)
            for m in [] if first is None else [first, *consumer.consume(1000, 0)]:
                if m.error() is not None:
                    continue
                now_ms = time.time() * 1000
                f = orjson.loads(m.value())  # type: ignore[arg-type]
                if m.topic() == catalog.name("ticks"):
                    p, second = m.partition(), f["ts"] // 1000 * 1000
                    partition_of[f["symbol"]] = p
                    if second > newest_second.get(p, -1):
                        newest_second[p] = second
                        second_opened[(p, second)] = m.timestamp()[1]
                    continue
                if f["interval"] == "1s" and f["ts"] / 1000 > started + args.warmup:
                    latencies.append(now_ms - (f["ts"] + 1000))
                    vectors.append((f["symbol"], f["ts"], now_ms))
            if time.time() - started > args.seconds + 20:
                break
        import urllib.request

        metrics = urllib.request.urlopen("http://127.0.0.1:9479/metrics").read().decode()
        (OUT / "latency_processor_metrics.txt").parent.mkdir(exist_ok=True)
        (OUT / "latency_processor_metrics.txt").write_text(metrics)
    finally:
        processor.terminate()
        processor.wait(30)
        consumer.close()
        for fut in admin.delete_topics([s.name for s in catalog.specs()], operation_timeout=60).values():
            fut.result(timeout=60)
    lat = np.array(latencies)
    from_closing = np.array([read - second_opened[(partition_of[sym], start + 1000)] for sym, start, read in vectors
                             if (partition_of.get(sym, -1), start + 1000) in second_opened])
    wait = args.max_wait_ms if args.max_wait_ms is not None else settings.features.max_wait_ms
    closing = {"vectors": len(from_closing), "p50_ms": float(np.percentile(from_closing, 50)),
               "p99_ms": float(np.percentile(from_closing, 99)), "max_ms": float(from_closing.max())}
    result = {"rate": args.rate, "max_wait_ms": wait, "vectors": len(lat), "p50_ms": float(np.percentile(lat, 50)),
              "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()),
              "from_closing_tick": closing}
    print(f"\n{args.rate:,} ticks/s over {args.symbols} symbols, processor max wait {wait} ms: "
          f"{len(lat):,} one-second feature vectors, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
          f"max {result['max_ms']:.1f} ms")
    print(f"from the closing tick's produce time (CreateTime): {closing['vectors']:,} vectors, p50 "
          f"{closing['p50_ms']:.1f} ms, p99 {closing['p99_ms']:.1f} ms, max {closing['max_ms']:.1f} ms")
    OUT.mkdir(exist_ok=True)
    (OUT / f"features_latency_{wait}ms.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Feature-processor latency on the local broker: a steady tick rate in, the time until each bar's feature
vector is readable downstream (read_committed), beside the floor any exactly-once pipeline starts from here.

    python -m bench.features_latency [--rate 10000] [--seconds 40] [--max-wait-ms 10]
                                     [--pipelines features,relay-eos,relay-plain]

A bar [b, b + 1 s) closes when the first tick at or after b + 1 s reaches its partition. The producer
(`streamquant produce ticks`, paced to the rate) stamps each tick with its due time, so that tick leaves
the producer at wall time ≈ b + 1 s (a few ms later at most: its pacing granularity, which this
measure therefore includes). Latency of a 1 s feature vector = time it is read here − (b + 1 s).

A second measure starts the clock where the issue's definition does, when the closing tick was produced: this
reader also reads `ticks` and takes, for each partition and second, the Kafka timestamp (CreateTime: set by
the producing client when it is handed the tick) of the partition's first tick at or after b + 1 s, the tick
that moves that partition's watermark past the bar. This leaves out the producer's pacing; its linger and
the trip to the broker stay in.

Then, in the same run and with the same producer, reader and clock, the same closing ticks go through
`bench.peer_eos_relay` (raw confluent-kafka, no computation): once with a transaction per closing batch, as
the processor commits, and once at-least-once without transactions. Those are what exactly-once (and plain)
consume–produce costs on this machine before any feature is computed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer

from streamquant.kafka_io import admin_client
from streamquant.settings import TopicSettings, load_settings
from streams.topics import TopicCatalog, TopicSpec, ensure_topics

OUT = Path(__file__).parent / "out"
GC_LOG = Path(".devstack/logs/kafka-gc.log")
# A line: "[2026-11-27T04:09:48.123+0000][405.309s] GC(48) Pause Young (Normal) (...) 799M->197M(1024M) 38.398ms"
_PAUSE = re.compile(r"^\[([^\]]+)\].*\bPause\b.* ([0-9.]+)ms$")


def _summary(values: list[float]) -> dict[str, float]:
    a = np.array(values)
    return {"vectors": len(a), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}


def measure(pipeline: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs the producer, the pipeline (`features`, `relay-eos` or `relay-plain`) and the reader on fresh
    topics; returns the latencies (ms)."""
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
    output = catalog.name("features") if pipeline == "features" else f"{prefix}relayed"
    if pipeline == "features":
        command = [*cli, "run", "features"]
    else:
        ensure_topics(admin, [TopicSpec(output, 8, "relayed", "bench.peer_eos_relay's output")])
        # A topic just created can still be unknown to the broker's metadata answers for a moment, and a
        # consumer that subscribes then never gets it assigned (it looks again every 5 minutes).
        deadline = time.time() + 30
        while len(admin.list_topics(output, timeout=10).topics[output].partitions) < 8 and time.time() < deadline:
            time.sleep(0.2)
        command = [sys.executable, "-m", "bench.peer_eos_relay", "--bootstrap", settings.kafka.bootstrap,
                   "--ticks", catalog.name("ticks"), "--out", output, "--group", f"lat-{run}",
                   *(["--no-transactions"] if pipeline == "relay-plain" else [])]
    consumer = Consumer({**settings.kafka.client_config(), "group.id": f"lat-read-{run}",
                         "isolation.level": "read_committed", "auto.offset.reset": "latest",
                         "fetch.wait.max.ms": 5})
    consumer.subscribe([output, catalog.name("ticks")])
    OUT.mkdir(exist_ok=True)
    log = (OUT / f"latency_{pipeline}.log").open("w")
    processor = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    due: list[float] = []  # features only: from the closing tick's due time
    read: list[tuple[int, int, float]] = []  # (ticks partition or -1, second the closing tick opened, read at ms)
    symbols: list[str] = []  # features: the vector's symbol, mapped to its partition at the end
    partition_of: dict[str, int] = {}
    traded: set[tuple[str, int]] = set()  # (symbol, second) with a tick: a bar to expect
    newest_second: dict[int, int] = {}
    second_opened: dict[tuple[int, int], int] = {}  # (ticks partition, second) -> CreateTime of its first tick
    try:
        time.sleep(4)  # pipeline up and assigned
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
                    p, second = int(m.partition() or 0), f["ts"] // 1000 * 1000
                    partition_of[f["symbol"]] = p
                    traded.add((f["symbol"], second))
                    if second > newest_second.get(p, -1):
                        newest_second[p] = second
                        second_opened[(p, second)] = m.timestamp()[1]
                    continue
                if pipeline == "features":
                    if f["interval"] == "1s" and f["ts"] / 1000 > started + args.warmup:
                        due.append(now_ms - (f["ts"] + 1000))
                        read.append((-1, f["ts"] + 1000, now_ms))
                        symbols.append(f["symbol"])
                elif f["second"] / 1000 > started + args.warmup + 1:
                    read.append((f["partition"], f["second"], now_ms))
            if time.time() - started > args.seconds + 20:
                break
        if pipeline == "features":
            metrics = urllib.request.urlopen("http://127.0.0.1:9479/metrics").read().decode()
            (OUT / "latency_processor_metrics.txt").write_text(metrics)
            processor_figures = _processor_figures(metrics)
    finally:
        processor.terminate()
        processor.wait(30)
        log.close()
        consumer.close()
        names = [s.name for s in catalog.specs()] + ([] if pipeline == "features" else [output])
        for fut in admin.delete_topics(names, operation_timeout=60).values():
            fut.result(timeout=60)
    if symbols:  # a live check on the way: each bar with ticks gave one vector, read once
        pairs = set(zip(symbols, (r[1] for r in read), strict=True))
        # The newest second is left out: its bars close only where a tick of the next second came before the
        # producer stopped, which a partition may not have had.
        seconds = set(sorted({second for _p, second, _at in read})[:-1])
        result_vectors = {"duplicates": len(read) - len(pairs),
                          "missing": sum(1 for sym, start in traded  # (a bar starting at `start` closes at +1 s)
                                         if start + 1000 in seconds and (sym, start + 1000) not in pairs)}
        read = [(partition_of.get(sym, -1), second, at) for sym, (_p, second, at) in zip(symbols, read, strict=True)]
    spans = [(second_opened[(p, second)], at) for p, second, at in read if (p, second) in second_opened]
    if not spans:
        raise SystemExit(f"{pipeline}: nothing was read back; is the broker up?")
    result: dict[str, Any] = {"from_closing_tick": _summary([at - created for created, at in spans])}
    if due:
        result["from_due_time"] = _summary(due)
        result["processor"] = processor_figures
        result["vectors"] = result_vectors
    pauses = broker_pauses(args.gc_log, started * 1000, time.time() * 1000)
    if pauses is not None:
        # A record whose way from the closing tick to the reader spans a broker pause waited for it.
        clear = [at - created for created, at in spans
                 if not any(end >= created and end - ms <= at for end, ms in pauses)]
        result["broker_gc"] = {"pauses": len(pauses), "pause_total_ms": round(sum(ms for _, ms in pauses), 1),
                               "pause_max_ms": max((ms for _, ms in pauses), default=0.0),
                               "records_spanning_a_pause": len(spans) - len(clear),
                               "others": _summary(clear) if clear else None}
    return result


def _processor_figures(metrics: str) -> dict[str, float]:
    """The processor's batches and its transactions that reached the broker, from its Prometheus metrics."""
    def value(name: str) -> float:
        m = re.search(rf'^{name}{{processor="features"}} ([0-9.e+-]+)$', metrics, re.M)
        return float(m.group(1)) if m else float("nan")

    batches, batch_s = value("streamquant_batch_seconds_count"), value("streamquant_batch_seconds_sum")
    commits, commit_s = (value("streamquant_transaction_commit_seconds_count"),
                         value("streamquant_transaction_commit_seconds_sum"))
    return {"batches": batches, "batch_mean_ms": batch_s / batches * 1000, "busy_s": batch_s,
            "broker_transactions": commits, "commit_mean_ms": commit_s / commits * 1000}


def broker_pauses(gc_log: Path | None, since_ms: float, until_ms: float) -> list[tuple[float, float]] | None:
    """(end, duration) in ms of the broker's collector pauses between the two times, from the dev stack's GC
    log (`streamquant dev up` writes it); None without one."""
    if gc_log is None or not gc_log.exists():
        return None
    out = []
    for line in gc_log.read_text(errors="replace").splitlines():
        m = _PAUSE.match(line)
        if m:
            end = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() * 1000
            if since_ms <= end <= until_ms:
                out.append((end, float(m.group(2))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--max-wait-ms", type=int, default=None, help="processor batch wait (default: settings)")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--gc-log", type=Path, default=GC_LOG,
                        help="the broker's GC log, to tell which records waited for a collector pause")
    parser.add_argument("--pipelines", default="features,relay-eos,relay-plain",
                        help="which to run, in order (comma-separated): features, relay-eos, relay-plain")
    args = parser.parse_args()
    wait = args.max_wait_ms if args.max_wait_ms is not None else load_settings().features.max_wait_ms
    pipelines = args.pipelines.split(",")
    if not set(pipelines) <= {"features", "relay-eos", "relay-plain"}:
        raise SystemExit(f"--pipelines: unknown {sorted(set(pipelines) - {'features', 'relay-eos', 'relay-plain'})}")
    results: dict[str, Any] = {"rate": args.rate, "symbols": args.symbols, "max_wait_ms": wait}
    for pipeline in pipelines:
        results[pipeline] = measure(pipeline, args)
    print(f"\n{args.rate:,} ticks/s over {args.symbols} symbols, processor max wait {wait} ms")
    if "features" in results:
        due = results["features"]["from_due_time"]
        print(f"features, from the closing tick's due time: {due['vectors']:,} one-second feature vectors, p50 "
              f"{due['p50_ms']:.1f} ms, p99 {due['p99_ms']:.1f} ms, max {due['max_ms']:.1f} ms")
        v = results["features"]["vectors"]
        print(f"feature vectors read twice: {v['duplicates']}; bars with ticks but no vector read: {v['missing']}")
        f = results["features"]["processor"]
        print(f"processor: {f['batches']:,.0f} batches, {f['batch_mean_ms']:.2f} ms each on average "
              f"({f['busy_s']:.1f} s busy); {f['broker_transactions']:,.0f} transactions to the broker, commit "
              f"{f['commit_mean_ms']:.1f} ms on average")
    labels = {"features": "features (run features)", "relay-eos": "raw confluent-kafka relay, transactions",
              "relay-plain": "raw confluent-kafka relay, no transactions"}
    print("from the closing tick's produce time (CreateTime):")
    for pipeline in pipelines:
        c = results[pipeline]["from_closing_tick"]
        print(f"  {labels[pipeline]:44s} {c['vectors']:>6,} records  p50 {c['p50_ms']:6.1f} ms  p99 "
              f"{c['p99_ms']:6.1f} ms  max {c['max_ms']:6.1f} ms")
        gc = results[pipeline].get("broker_gc")
        if gc is not None:
            o = gc["others"] or {"p50_ms": float("nan"), "p99_ms": float("nan")}
            print(f"    broker GC: {gc['pauses']} pauses, {gc['pause_total_ms']:.0f} ms in all, longest "
                  f"{gc['pause_max_ms']:.0f} ms; {gc['records_spanning_a_pause']:,} records waited for one; the "
                  f"others p50 {o['p50_ms']:.1f} ms, p99 {o['p99_ms']:.1f} ms")
    if "features" in results and "relay-eos" in results:
        ours, floor = results["features"]["from_closing_tick"], results["relay-eos"]["from_closing_tick"]
        print(f"features ÷ transactional relay: p50 {ours['p50_ms'] / floor['p50_ms']:.2f}×, "
              f"p99 {ours['p99_ms'] / floor['p99_ms']:.2f}×")
    OUT.mkdir(exist_ok=True)
    (OUT / f"features_latency_{wait}ms.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

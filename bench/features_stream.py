"""Feature-processor throughput on the local broker, against the raw ceiling, in one run.

    python -m bench.features_stream [--ticks 2000000] [--symbols 500] [--partitions 8]

Preloads synthetic ticks into a fresh `ticks` topic, then measures, one after the other on the same data:
(a) the raw ceiling: confluent-kafka consume + StreamQuant decode only, no output;
(b) the feature processor end to end: decode, 1s and 1m bars, 14 indicators, bars/features/changelog
    published and offsets committed in one transaction per micro-batch (exactly-once on);
(c) with --peers-python: the same bars and indicators built with Quix Streams (bench/peer_quix_features.py);
(d) scale-out: `streamquant run features` as 1 and as 2 processes in one consumer group (each a fresh group over
    the same ticks), the steady rate between 10 % and 90 % of the ticks committed (process start and group
    join left out, the same way for both).
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
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from bench.tickdata import preload
from schemas.tick_decoder import TickDecoder
from streamquant.cli_run import build_feature_processor
from streamquant.kafka_io import admin_client
from streamquant.settings import FeaturesSettings, MetricsSettings, TopicSettings, load_settings
from streams.source import BatchSource
from streams.topics import TopicCatalog, ensure_topics

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=2_000_000)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--peers-python", type=Path, default=None,
                        help="interpreter of a venv with quixstreams (make bench creates .venv-bench)")
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    settings = load_settings(topics=TopicSettings(prefix=f"bench-{run}.", data_partitions=args.partitions),
                             features=FeaturesSettings(group=f"bench-{run}", instance_id="bench"),
                             metrics=MetricsSettings(port=0))
    catalog = TopicCatalog(settings.topics.catalog_options())
    admin = admin_client(settings.kafka)
    ensure_topics(admin, catalog.specs())
    ticks_topic = catalog.name("ticks")
    try:
        started = time.perf_counter()
        sent = preload(settings.kafka, ticks_topic, args.ticks, args.symbols)
        preload_s = time.perf_counter() - started
        print(f"preloaded {sent:,} ticks into {ticks_topic} ({args.partitions} partitions) in {preload_s:.1f}s")

        # (a) consume + decode only
        source = BatchSource(settings.kafka, f"bench-raw-{run}", [ticks_topic], max_messages=settings.ingest.max_batch,
                             max_wait_s=0.05)
        decoder = TickDecoder()
        got = 0
        started = time.perf_counter()
        first_a: tuple[float, int] | None = None
        while got < sent:
            batch = source.next_batch()
            got += len(decoder.decode(batch.values).ticks)
            if first_a is None and got:
                first_a = (time.perf_counter(), got)
        raw_s = time.perf_counter() - started
        raw_steady_s = time.perf_counter() - first_a[0] if first_a else raw_s
        source.close()

        # (b) the feature processor, exactly-once
        processor = build_feature_processor(settings)
        processor.freeze_gc = True  # as `streamquant run features` does
        done = 0
        started = time.perf_counter()
        first_b: tuple[float, int] | None = None
        while done < sent:
            done += processor.step()
            if first_b is None and done:
                first_b = (time.perf_counter(), done)
        processor.commit_held()  # the last batches' offsets, if they published nothing
        feat_s = time.perf_counter() - started
        feat_steady_s = time.perf_counter() - first_b[0] if first_b else feat_s
        processor.close()

        # (c) the same bars and indicators with Quix Streams, in its own venv, over the same topic
        c = None
        if args.peers_python is not None:
            line = subprocess.run([str(args.peers_python), str(Path(__file__).parent / "peer_quix_features.py"),
                                   settings.kafka.bootstrap, ticks_topic, f"bench-{run}.", str(sent)],
                                  capture_output=True, text=True, check=True, timeout=3600)
            c = json.loads(line.stdout.strip().splitlines()[-1])["ticks_per_s"]
        # (d) scale-out: 1 and 2 processes in one group, as a user deploys them
        scale = {n: instances(n, settings, admin, run, ticks_topic, args.partitions, sent) for n in (1, 2)}
    finally:
        names = [t for t in admin.list_topics(timeout=10).topics if f"bench-{run}" in t]
        for fut in admin.delete_topics(names, operation_timeout=60).values():
            fut.result(timeout=60)

    a, b = sent / raw_s, sent / feat_s
    # After the first batch: the same run without the start (client start, group join, restore, first fetch).
    a_steady = (sent - first_a[1]) / raw_steady_s if first_a else a
    b_steady = (sent - first_b[1]) / feat_steady_s if first_b else b
    print(f"\n| run | ticks/s, whole run | ticks/s, after the first batch |\n| --- | ---: | ---: |\n"
          f"| (a) consume + decode only | {a:,.0f} | {a_steady:,.0f} |\n"
          f"| (b) run features, exactly-once, 1s+1m bars, 14 indicators | {b:,.0f} | {b_steady:,.0f} |")
    if c is not None:
        print(f"| (c) Quix Streams, exactly-once, the same bars and indicators | {c:,.0f} | |")
    print(f"\nwhole run: b/a = {b / a:.2f}" + (f", b/c = {b / c:.2f}" if c else "")
          + f"; after the first batch: b/a = {b_steady / a_steady:.2f}")
    print(f"\n(d) `run features` processes in one group, steady rate: 1 → {scale[1]:,.0f} ticks/s, "
          f"2 → {scale[2]:,.0f} ticks/s ({scale[2] / scale[1]:.2f}×)")
    OUT.mkdir(exist_ok=True)
    (OUT / "features_stream.json").write_text(json.dumps({"ticks": sent, "raw_ticks_per_s": a,
                                                           "features_ticks_per_s": b, "quix_ticks_per_s": c,
                                                           "raw_steady_ticks_per_s": a_steady,
                                                           "features_steady_ticks_per_s": b_steady,
                                                           "processes_ticks_per_s": scale},
                                                          indent=2))


def instances(n: int, settings: Any, admin: Any, run: str, topic: str, partitions: int, sent: int) -> float:
    """ticks/s of n `streamquant run features` processes sharing one new group, between 10 % and 90 % committed."""
    group = f"bench-{run}-x{n}"
    env = {**os.environ, "STREAMQUANT_TOPICS_PREFIX": settings.topics.prefix, "STREAMQUANT_FEATURES_GROUP": group,
           "STREAMQUANT_METRICS_PORT": "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "streamquant", "run", "features", "--stop-when-idle", "5"],
                              env={**env, "STREAMQUANT_FEATURES_INSTANCE_ID": f"i{k}"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for k in range(n)]
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])]
    marks: dict[float, float] = {}
    deadline = time.monotonic() + 600
    try:
        while len(marks) < 2 and time.monotonic() < deadline:
            try:
                got = admin.list_consumer_group_offsets(request)[group].result(timeout=10)
                done = sum(max(tp.offset, 0) for tp in got.topic_partitions)
            except Exception:  # the group does not exist yet
                done = 0
            now = time.monotonic()
            for mark in (0.1, 0.9):
                if mark not in marks and done >= mark * sent:
                    marks[mark] = now
            time.sleep(0.05)
    finally:
        for proc in procs:
            proc.wait(timeout=120)
    if len(marks) < 2:
        raise RuntimeError(f"{n} processes did not commit 90 % of the ticks in time")
    return 0.8 * sent / (marks[0.9] - marks[0.1])


if __name__ == "__main__":
    main()

"""Feature-processor throughput on the local broker, against the raw ceiling, in one run.

    python -m bench.features_stream [--ticks 2000000] [--symbols 500] [--partitions 8]

Preloads synthetic ticks into a fresh `ticks` topic, then measures, one after the other on the same data:
(a) the raw ceiling: confluent-kafka consume + StreamQuant decode only, no output;
(b) the feature processor end to end: decode, 1s and 1m bars, 14 indicators, bars/features/changelog
    published and offsets committed in one transaction per micro-batch (exactly-once on);
(c) with --peers-python: the same bars and indicators built with Quix Streams (bench/peer_quix_features.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import uuid
from pathlib import Path

from processors.synthetic import MarketSpec, TickGenerator
from schemas.tick_decoder import TickDecoder
from schemas.ticks import encode_columns
from streamquant.cli_run import build_feature_processor
from streamquant.kafka_io import admin_client
from streamquant.settings import FeaturesSettings, MetricsSettings, TopicSettings, load_settings
from streams.sink import KafkaSink
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
        gen = TickGenerator(MarketSpec(symbols=args.symbols, seed=5, rate=20_000, start_ms=1_767_225_600_000))
        sink = KafkaSink(settings.kafka)
        sent = 0
        while sent < args.ticks:
            chunk = gen.next_chunk(min(100_000, args.ticks - sent))
            sink.write_many(ticks_topic, [s.encode() for s in chunk.symbol()], encode_columns(chunk))
            sent += len(chunk)
        sink.flush()
        preload_s = time.perf_counter() - started
        print(f"preloaded {sent:,} ticks into {ticks_topic} ({args.partitions} partitions) in {preload_s:.1f}s")

        # (a) consume + decode only
        source = BatchSource(settings.kafka, f"bench-raw-{run}", [ticks_topic], max_messages=settings.ingest.max_batch,
                             max_wait_s=0.05)
        decoder = TickDecoder()
        got = 0
        started = time.perf_counter()
        while got < sent:
            batch = source.next_batch()
            got += len(decoder.decode(batch.values).ticks)
        raw_s = time.perf_counter() - started
        source.close()

        # (b) the feature processor, exactly-once
        processor = build_feature_processor(settings)
        done = 0
        started = time.perf_counter()
        while done < sent:
            done += processor.step()
        feat_s = time.perf_counter() - started
        processor.close()

        # (c) the same bars and indicators with Quix Streams, in its own venv, over the same topic
        c = None
        if args.peers_python is not None:
            line = subprocess.run([str(args.peers_python), str(Path(__file__).parent / "peer_quix_features.py"),
                                   settings.kafka.bootstrap, ticks_topic, f"bench-{run}.", str(sent)],
                                  capture_output=True, text=True, check=True, timeout=3600)
            c = json.loads(line.stdout.strip().splitlines()[-1])["ticks_per_s"]
    finally:
        names = [t for t in admin.list_topics(timeout=10).topics if f"bench-{run}" in t]
        for fut in admin.delete_topics(names, operation_timeout=60).values():
            fut.result(timeout=60)

    a, b = sent / raw_s, sent / feat_s
    print(f"\n| run | ticks/s |\n| --- | ---: |\n| (a) consume + decode only | {a:,.0f} |\n"
          f"| (b) run features, exactly-once, 1s+1m bars, 14 indicators | {b:,.0f} |")
    if c is not None:
        print(f"| (c) Quix Streams, exactly-once, the same bars and indicators | {c:,.0f} |")
    print(f"\nb/a = {b / a:.2f}" + (f", b/c = {b / c:.2f}" if c else ""))
    OUT.mkdir(exist_ok=True)
    (OUT / "features_stream.json").write_text(json.dumps({"ticks": sent, "raw_ticks_per_s": a,
                                                           "features_ticks_per_s": b, "quix_ticks_per_s": c},
                                                          indent=2))


if __name__ == "__main__":
    main()

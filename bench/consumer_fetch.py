"""One consumer's rate on the local broker under librdkafka's fetch defaults and under StreamQuant's, in one run.

    python -m bench.consumer_fetch [--ticks 1000000] [--partitions 8]

Preloads synthetic ticks into a fresh topic, then reads all of them with a plain confluent-kafka consumer
(a new group each time, `read_committed`, `consume(25000, 0.05)` as the batch source does), first only
consuming, then consuming and decoding (StreamQuant's TickDecoder), under: librdkafka's defaults; each of the
two settings `streams.source.FETCH_DEFAULTS` raises; both (what BatchSource uses). The rate is taken from the
first batch on (client start and group join left out).
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from confluent_kafka import Consumer

from bench.tickdata import preload
from schemas.tick_decoder import TickDecoder
from streamquant.kafka_io import admin_client
from streamquant.settings import TopicSettings, load_settings
from streams.source import FETCH_DEFAULTS
from streams.topics import TopicCatalog, ensure_topics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    settings = load_settings(topics=TopicSettings(prefix=f"bench-fetch-{run}.", data_partitions=args.partitions))
    catalog = TopicCatalog(settings.topics.catalog_options())
    admin = admin_client(settings.kafka)
    topic = catalog.name("ticks")
    ensure_topics(admin, [s for s in catalog.specs() if s.name == topic])
    try:
        sent = preload(settings.kafka, topic, args.ticks)
        print(f"{sent:,} ticks in {topic} ({args.partitions} partitions)\n")
        variants: list[tuple[str, dict[str, Any]]] = [("librdkafka defaults", {})]
        variants += [(f"{k} = {v:,}", {k: v}) for k, v in FETCH_DEFAULTS.items()]
        variants.append(("both (StreamQuant's BatchSource)", dict(FETCH_DEFAULTS)))
        print("| consumer settings | consume only, ticks/s | consume + decode, ticks/s |\n| --- | ---: | ---: |")
        for name, extra in variants:
            rates = [rate(settings, topic, sent, extra, decode) for decode in (False, True)]
            print(f"| {name} | {rates[0]:,.0f} | {rates[1]:,.0f} |")
    finally:
        for fut in admin.delete_topics([topic], operation_timeout=60).values():
            fut.result(timeout=60)


def rate(settings: Any, topic: str, total: int, extra: dict[str, Any], decode: bool) -> float:
    consumer = Consumer({**settings.kafka.client_config(), "group.id": f"bench-fetch-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed", **extra})
    consumer.subscribe([topic])
    decoder = TickDecoder()
    got, first, started = 0, 0, 0.0
    try:
        while got < total:
            messages = consumer.consume(25_000, 0.05)
            if not messages:
                continue
            if not got:
                started, first = time.perf_counter(), len(messages)
            got += len(messages)
            if decode:
                decoder.decode([m.value() for m in messages])
        return (got - first) / (time.perf_counter() - started)
    finally:
        consumer.close()


if __name__ == "__main__":
    main()

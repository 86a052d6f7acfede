"""The latency floor for `bench.features_latency`: raw confluent-kafka, no computation, the same loop shape.

    python -m bench.peer_eos_relay --bootstrap HOST:PORT --ticks T --out O --group G [--no-transactions]

Reads the tick topic and, per micro-batch, writes one record for every tick that opens a new second on its
partition (the tick that closes the partition's 1 s bars in `run features`) to `O`, carrying the partition
and the second. With transactions (the default) that record and the batch's offsets are committed in one
Kafka transaction, exactly as the feature processor commits a closing batch; a batch with no such tick
commits nothing (its offsets go with the next transaction, as the processor holds them). With
`--no-transactions` the records are produced idempotently with acks=all and flushed, then the offsets are
committed: at-least-once, what a transaction adds is the difference.

No indicator, no bar, no decoding beyond the two fields it needs: whatever latency this shows on a machine
is what any exactly-once consume–produce pipeline in Python on librdkafka starts from there. Producer
settings are tuned for latency (linger 0, a 2 ms retry backoff for the coordinator's CONCURRENT_TRANSACTIONS
between back-to-back transactions), not left at the defaults, so the floor is not inflated.
"""

from __future__ import annotations

import argparse
import signal
import uuid

import orjson
from confluent_kafka import Consumer, KafkaError, Producer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--ticks", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--no-transactions", action="store_true")
    args = parser.parse_args()
    transactional = not args.no_transactions
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False,
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    producer_conf = {"bootstrap.servers": args.bootstrap, "acks": "all", "enable.idempotence": True,
                     "linger.ms": 0, "retry.backoff.ms": 2, "retry.backoff.max.ms": 100}
    if transactional:
        producer_conf["transactional.id"] = f"{args.group}-{uuid.uuid4().hex[:6]}"
    producer = Producer(producer_conf)
    if transactional:
        producer.init_transactions(30)
    consumer.subscribe([args.ticks])
    newest: dict[int, int] = {}  # partition -> newest second seen
    while not stop:
        first = consumer.poll(0.05)
        if first is None:
            continue
        opened: list[tuple[int, int]] = []
        for m in [first, *consumer.consume(1000, 0)]:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise SystemExit(f"consume: {err.str()}")
                continue
            p = int(m.partition() or 0)
            second = orjson.loads(m.value())["ts"] // 1000 * 1000  # type: ignore[arg-type]
            if second > newest.get(p, -1):
                if p in newest:
                    opened.append((p, second))
                newest[p] = second
        if not opened:
            continue
        if transactional:
            producer.begin_transaction()
        for p, second in opened:
            producer.produce(args.out, orjson.dumps({"partition": p, "second": second}), str(p).encode())
        if transactional:
            positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
        else:
            producer.flush(30)
            consumer.commit(asynchronous=False)
    consumer.close()


if __name__ == "__main__":
    main()

"""Request-reply Predict through Kafka: the round trip a client sees, against the floor of Kafka itself.

Needs the local stack (`make up`). On fresh topics: a 100-tree forest (scikit-learn, 20 features) is exported,
registered and promoted; `streamquant run predictions` answers. The client sends one request at a time (one
row of features) and waits for its response (read_committed consumer assigned to the response partition),
`--requests` times. In the same run, the floor: the same request-reply through the same broker with a
minimal confluent-kafka echo responder (consume, produce, no work) in a second process.

    python -m bench.predict_roundtrip [--requests 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

BOOTSTRAP = os.environ.get("STREAMQUANT_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
FEATURES = [f"f{i}" for i in range(20)]


def _producer() -> Producer:
    return Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 0, "partitioner": "murmur2_random"})


def _consumer(topic: str, partition: int) -> Consumer:
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"rt-{uuid.uuid4()}", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "fetch.wait.max.ms": 1})
    end = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
    c.assign([TopicPartition(topic, partition, end)])
    return c


def _echo(requests: str, responses: str, ready: Any) -> None:
    """The floor: consume a request, produce a response, nothing else."""
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"echo-{uuid.uuid4()}", "auto.offset.reset": "latest",
                  "fetch.wait.max.ms": 1})
    c.subscribe([requests], on_assign=lambda *_: ready.set())
    p = _producer()
    while True:
        m = c.poll(0.05)
        if m is not None and m.error() is None:
            p.produce(responses, m.value(), key=m.key())
        p.poll(0)


def round_trips(requests: str, responses: str, n: int, row: dict[str, float]) -> np.ndarray:
    producer = _producer()
    cid = "rt-client"  # one key: one response partition to follow
    consumer = _consumer(responses, _partition(responses, cid))
    out = np.empty(n)
    for i in range(n):
        body = orjson.dumps({"correlation_id": cid, "model": "rt", "rows": [row], "seq": i})
        started = time.perf_counter()
        producer.produce(requests, body, key=cid.encode())
        producer.flush()
        while True:
            m = consumer.poll(1.0)
            if m is not None and m.error() is None:
                break
        out[i] = time.perf_counter() - started
    consumer.close()
    return out


def _partition(topic: str, key: str) -> int:
    from aiokafka.partitioner import murmur2

    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "meta"})
    n = len(c.list_topics(topic, timeout=10).topics[topic].partitions)
    c.close()
    return (murmur2(key.encode()) & 0x7FFFFFFF) % n


def _register_model(env: dict[str, str], prefix: str, work: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    from gpu_kernels.forest import save
    from gpu_kernels.forest_export import from_sklearn
    from processors.registry import Registry, publish
    from schemas.records import Label, ModelVersion
    from streams.config import KafkaConfig

    rng = np.random.default_rng(1)
    X = rng.normal(size=(20_000, 20))
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(size=len(X)) > 0).astype(int)
    model = RandomForestClassifier(n_estimators=100, max_depth=12, n_jobs=2, random_state=0).fit(X, y)
    path = work / "forest.npz"
    sha = save(from_sklearn(model, FEATURES), str(path))
    v1 = ModelVersion("rt", 1, str(path), sha, tuple(FEATURES), Label("direction", 5), int(time.time() * 1000))
    kafka = KafkaConfig(bootstrap=BOOTSTRAP)
    registry = Registry()
    registry.apply(v1)
    publish(kafka, f"{prefix}models", [v1, *registry.promote("rt", 1)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    run = uuid.uuid4().hex[:8]
    prefix = f"rt-{run}."
    work = Path(tempfile.mkdtemp(prefix="sq-bench-rt-"))
    env = {**os.environ, "STREAMQUANT_TOPICS_PREFIX": prefix, "STREAMQUANT_METRICS_PORT": "0",
           "STREAMQUANT_PREDICTIONS_MODEL": "rt", "STREAMQUANT_PREDICTIONS_GROUP": f"rt-{run}",
           "STREAMQUANT_KAFKA_BOOTSTRAP": BOOTSTRAP}
    sq = [sys.executable, "-m", "streamquant"]
    subprocess.run([*sq, "topics", "create"], env=env, check=True, capture_output=True)
    _register_model(env, prefix, work)
    server = subprocess.Popen([*sq, "run", "predictions"], env=env, stdout=(work / "predict.log").open("wb"),
                              stderr=subprocess.STDOUT)
    row = {f: 0.1 * i for i, f in enumerate(FEATURES)}
    requests, responses = f"{prefix}ml.predict.requests", f"{prefix}ml.predict.responses"
    try:
        time.sleep(6)  # the processor joins its groups
        round_trips(requests, responses, 50, row)  # warm-up (connections, first model load)
        ours = round_trips(requests, responses, args.requests, row)
    finally:
        server.terminate()
        server.wait(60)
    ready = multiprocessing.Event()
    echo = multiprocessing.Process(target=_echo, args=(f"{prefix}echo.req", f"{prefix}echo.resp", ready), daemon=True)
    subprocess.run([sys.executable, "-c", (
        "from confluent_kafka.admin import AdminClient, NewTopic as T; import sys; "
        f"a = AdminClient({{'bootstrap.servers': '{BOOTSTRAP}'}}); "
        f"[f.result() for f in a.create_topics([T('{prefix}echo.req', 3, 1), T('{prefix}echo.resp', 3, 1)]).values()]"
    )], check=True)
    echo.start()
    ready.wait(30)
    time.sleep(2)
    round_trips(f"{prefix}echo.req", f"{prefix}echo.resp", 50, row)
    floor = round_trips(f"{prefix}echo.req", f"{prefix}echo.resp", args.requests, row)
    echo.kill()
    for name, t in (("StreamQuant Predict (1 row, 100 trees)", ours), ("confluent-kafka echo (the floor)", floor)):
        p50, p99 = np.percentile(t * 1000, [50, 99])
        print(f"| {name} | {len(t)} | {p50:.2f} ms | {p99:.2f} ms | {t.max() * 1000:.1f} ms |")
    print(f"p99 ratio StreamQuant / floor: {np.percentile(ours, 99) / np.percentile(floor, 99):.2f}")


if __name__ == "__main__":
    main()

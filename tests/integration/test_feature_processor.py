"""The feature processor on the real broker: killed with SIGKILL mid-stream and restarted, it still publishes
exactly the bars and features of the offline computation — no gap, no duplicate — and so do two instances
sharing the partitions when one of them dies."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from processors.features import EngineConfig, FeatureEngine
from processors.online_store import OnlineStore, store_key
from processors.synthetic import MarketSpec, TickGenerator
from schemas.tick_decoder import TickDecoder
from schemas.ticks import encode_columns
from streams.config import KafkaConfig
from streams.sink import KafkaSink

PARTITIONS = 4
BAD = [b"{oops", b'{"symbol":"S001","ts":1767225600000,"price":-5,"size":1}', b"\x00\x00\x00\x00\x01zz"]


@pytest.fixture
def stack(admin: AdminClient, kafka: KafkaConfig, unique: str, tmp_path: Path) -> Any:
    prefix = f"fp-{unique}."
    env = {**os.environ, "STREAMQUANT_TOPICS_PREFIX": prefix, "STREAMQUANT_TOPICS_DATA_PARTITIONS": str(PARTITIONS),
           "STREAMQUANT_METRICS_PORT": "0", "STREAMQUANT_INGEST_MAX_BATCH": "700",
           "STREAMQUANT_FEATURES_GROUP": f"fp-{unique}", "STREAMQUANT_KAFKA_BOOTSTRAP": kafka.bootstrap,
           "STREAMQUANT_KAFKA_OPTIONS": '{"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}'}
    created = subprocess.run([sys.executable, "-m", "streamquant", "topics", "create"], env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    assert created.returncode == 0, created.stderr
    yield prefix, env
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    for fut in admin.delete_topics(names, operation_timeout=30).values():
        fut.result(timeout=30)


def produce_stream(kafka: KafkaConfig, topic: str, ticks: int) -> None:
    gen = TickGenerator(MarketSpec(symbols=40, seed=21, rate=400, start_ms=1_767_225_600_000))
    sink = KafkaSink(kafka)
    sent = 0
    while sent < ticks:
        chunk = gen.next_chunk(min(5000, ticks - sent))
        sink.write_many(topic, [s.encode() for s in chunk.symbol()], encode_columns(chunk))
        sent += len(chunk)
        if sent == 5000:
            for bad in BAD:
                sink.write(topic, b"S001", bad)
    sink.flush()


def start(env: dict[str, str], instance: str, idle_s: int = 8) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "streamquant", "run", "features", "--stop-when-idle", str(idle_s)],
                            env={**env, "STREAMQUANT_FEATURES_INSTANCE_ID": instance}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def committed_total(kafka: KafkaConfig, group: str, topic: str) -> int:
    # Offsets pending in a killed instance's open transaction are "unstable": the broker holds the answer
    # back until that transaction is aborted (up to transaction.timeout.ms), so ask patiently.
    c = Consumer({**kafka.client_config(), "group.id": group, "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                tps = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
                return sum(max(tp.offset, 0) for tp in tps)
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
    finally:
        c.close()


def read_topic(kafka: KafkaConfig, topic: str) -> list[Any]:
    c = Consumer({**kafka.client_config(), "group.id": f"read-{time.time_ns()}", "isolation.level": "read_committed",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: list[Any] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out += [m for m in c.consume(5000, 0.5) if m.error() is None]
        positions = c.position([TopicPartition(topic, p) for p in range(PARTITIONS)])
        if all(tp.offset >= ends[tp.partition] for tp in positions):
            break
    c.close()
    return out


def expected(kafka: KafkaConfig, ticks_topic: str) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """The offline computation: each partition's ticks, as stored, through the same engine in one batch."""
    engine = FeatureEngine(EngineConfig())
    messages = read_topic(kafka, ticks_topic)
    bars: dict[Any, Any] = {}
    feats: dict[Any, Any] = {}
    for p in range(PARTITIONS):
        mine = sorted((m for m in messages if m.partition() == p), key=lambda m: m.offset())
        decoded = TickDecoder().decode([m.value() for m in mine])
        out, _ = engine.process(engine.empty_state(), decoded.ticks)
        for c in out.closed:
            for i in range(len(c)):
                key = (str(c.symbol[i]), c.interval, int(c.start[i]))
                bars[key] = (c.open[i], c.high[i], c.low[i], c.close[i], c.volume[i], c.trades[i])
                feats[key] = {n: c.features[n][i] for n in c.features}
    return bars, feats


def published(kafka: KafkaConfig, prefix: str) -> tuple[dict[Any, Any], dict[Any, Any]]:
    bars: dict[Any, Any] = {}
    feats: dict[Any, Any] = {}
    for m in read_topic(kafka, f"{prefix}bars"):
        b = orjson.loads(m.value())
        key = (b["symbol"], b["interval"], b["ts"])
        assert key not in bars, f"duplicate bar {key}"
        bars[key] = (b["open"], b["high"], b["low"], b["close"], b["volume"], b["trades"])
    for m in read_topic(kafka, f"{prefix}features"):
        f = orjson.loads(m.value())
        key = (f["symbol"], f["interval"], f["ts"])
        assert key not in feats, f"duplicate feature vector {key}"
        feats[key] = {n: (np.nan if v is None else v) for n, v in f["values"].items()}
    return bars, feats


def assert_exact(kafka: KafkaConfig, prefix: str, extra_dead_letters: Sequence[bytes] = ()) -> None:
    want_bars, want_feats = expected(kafka, f"{prefix}ticks")
    got_bars, got_feats = published(kafka, prefix)
    assert len(want_bars) > 1000
    assert got_bars.keys() == want_bars.keys(), (len(got_bars), len(want_bars))
    for key, want in want_bars.items():
        assert np.array_equal(np.array(got_bars[key], float), np.array(want, float)), key
    assert got_feats.keys() == want_feats.keys()
    for key, want in want_feats.items():
        got = got_feats[key]
        for name, value in want.items():
            assert np.array_equal(np.float64(got[name]), np.float64(value), equal_nan=True), (key, name)
    dlq = read_topic(kafka, f"{prefix}ticks.dlq")
    assert sorted(m.value() for m in dlq) == sorted([*BAD, *extra_dead_letters])
    # The online store holds each (symbol, interval)'s newest vector, as published.
    newest: dict[tuple[str, str], Any] = {}
    for (symbol, interval, ts), values in want_feats.items():
        if (symbol, interval) not in newest or ts > newest[(symbol, interval)][0]:
            newest[(symbol, interval)] = (ts, values)
    client = redis.Redis.from_url(os.environ["STREAMQUANT_REDIS_URL"])
    store = OnlineStore(client, namespace=prefix)
    keys = sorted(newest)
    stored = dict(zip(keys, [store.get_many(iv, [sym])[0] for sym, iv in keys], strict=True))
    for k, (ts, values) in newest.items():
        got = stored[k]
        assert got is not None and got[0] == ts, (k, got and got[0], ts)
        for name, value in values.items():
            assert np.array_equal(np.float64(np.nan if got[1][name] is None else got[1][name]), np.float64(value),
                                  equal_nan=True), (k, name)
    client.delete(*[store_key(iv, sym, prefix) for sym, iv in keys])


def test_killed_three_times_and_restarted_publishes_exactly_once(kafka: KafkaConfig, stack: Any) -> None:
    prefix, env = stack
    # Checkpoints only when a partition has none since its restore (and when idle): each restart replays the
    # ticks since the previous one's first batch. (The two-instance test runs the default interval.)
    env = {**env, "STREAMQUANT_FEATURES_CHECKPOINT_INTERVAL_MS": "600000"}
    produce_stream(kafka, f"{prefix}ticks", 60_000)
    total = 60_000 + len(BAD)
    rnd = random.Random(7)
    for threshold in (0.15, 0.4, 0.65):
        proc = start(env, "solo")
        deadline = time.monotonic() + 120
        target = threshold + rnd.uniform(0, 0.1)
        while committed_total(kafka, env["STREAMQUANT_FEATURES_GROUP"], f"{prefix}ticks") < target * total:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        time.sleep(rnd.uniform(0, 0.3))  # land anywhere inside a batch or a commit
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = start(env, "solo")
    output, _ = final.communicate(timeout=300)
    assert final.returncode == 0, output[-3000:]
    replayed = [int(n) for n in re.findall(r"\((\d+) ticks replayed", output)]
    assert replayed and sum(replayed) > 0, output[-3000:]
    assert committed_total(kafka, env["STREAMQUANT_FEATURES_GROUP"], f"{prefix}ticks") == total
    assert_exact(kafka, prefix)


def test_two_instances_one_killed_mid_stream(kafka: KafkaConfig, stack: Any) -> None:
    prefix, env = stack
    produce_stream(kafka, f"{prefix}ticks", 60_000)
    total = 60_000 + len(BAD)
    # b may finish its own partitions long before the group notices a is gone (session timeout).
    a, b = start(env, "a"), start(env, "b", idle_s=20)
    deadline = time.monotonic() + 120
    while committed_total(kafka, env["STREAMQUANT_FEATURES_GROUP"], f"{prefix}ticks") < 0.3 * total:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    a.send_signal(signal.SIGKILL)
    a.wait()
    output, _ = b.communicate(timeout=300)
    assert b.returncode == 0, output[-3000:]
    assert committed_total(kafka, env["STREAMQUANT_FEATURES_GROUP"], f"{prefix}ticks") == total, output[-3000:]
    assert_exact(kafka, prefix)


def test_a_changelog_whose_group_offsets_are_gone_is_refused(kafka: KafkaConfig, admin: AdminClient,
                                                             stack: Any) -> None:
    """The group's offsets expire (offsets.retention.minutes) or are deleted while its changelog lives on: the
    processor stops with one line instead of re-reading from auto.offset.reset (duplicates) and publishes
    nothing more."""
    prefix, env = stack
    group = env["STREAMQUANT_FEATURES_GROUP"]
    produce_stream(kafka, f"{prefix}ticks", 6_000)
    first = start(env, "solo", idle_s=3)
    output, _ = first.communicate(timeout=180)
    assert first.returncode == 0, output[-3000:]
    assert committed_total(kafka, group, f"{prefix}ticks") == 6_000 + len(BAD)
    features_before = len(read_topic(kafka, f"{prefix}features"))
    assert features_before > 0
    admin.delete_consumer_groups([group], request_timeout=30)[group].result(timeout=30)
    assert committed_total(kafka, group, f"{prefix}ticks") == 0
    again = start(env, "solo", idle_s=3)
    output, _ = again.communicate(timeout=180)
    assert again.returncode != 0, output[-3000:]
    assert "has no committed offsets" in output and "Traceback" not in output, output[-3000:]
    assert len(read_topic(kafka, f"{prefix}features")) == features_before

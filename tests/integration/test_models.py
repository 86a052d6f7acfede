"""Training → registry → predictions on the real broker and Redis.

Two versions are trained through the job plane; v1 is promoted and the prediction processor scores a stream
of feature vectors; it is killed with SIGKILL and restarted, and v2 is promoted mid-stream. Every vector gets
exactly one prediction, each equal to the offline score of the version it names, and versions switch once per
partition at a batch boundary. Tampered artifacts are refused; request-reply Predict answers from the online
store and explains what it cannot answer.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from processors.backtest_data import load_synthetic
from processors.feature_jobs import feature_table
from processors.online_store import OnlineStore
from processors.registry import load_scorer, read_registry
from schemas.records import DataSource, FeaturesCommand
from streams.config import KafkaConfig

FEATURES = ["rsi_14", "macd_hist_12_26_9", "logret_1", "vol_20", "atr_14"]
SEED = int.from_bytes(os.urandom(3), "big")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sq(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamquant", *args], env={**env, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def ml_env(admin: AdminClient, kafka: KafkaConfig, redis_url: str, unique: str, tmp_path: Path) -> Any:
    prefix = f"ml-{unique}."
    env = {**os.environ, "STREAMQUANT_TOPICS_PREFIX": prefix, "STREAMQUANT_JOBS_APP_ID": f"ml-{unique}",
           "STREAMQUANT_JOBS_WEB_PORT": str(free_port()), "STREAMQUANT_METRICS_PORT": "0",
           "STREAMQUANT_JOBS_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
           "STREAMQUANT_JOBS_CACHE_DIR": str(tmp_path / "cache"), "STREAMQUANT_KAFKA_BOOTSTRAP": kafka.bootstrap,
           "STREAMQUANT_REDIS_URL": redis_url, "STREAMQUANT_PREDICTIONS_MODEL": "dir",
           "STREAMQUANT_PREDICTIONS_INTERVAL": "1d", "STREAMQUANT_PREDICTIONS_GROUP": f"pred-{unique}",
           "STREAMQUANT_INGEST_MAX_BATCH": "150", "STREAMQUANT_TOPICS_DATA_PARTITIONS": "4"}
    created = sq(env, "topics", "create", timeout=60)
    assert created.returncode == 0, created.stderr
    yield prefix, env
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix) or t.startswith(f"ml-{unique}")]
    for fut in admin.delete_topics(names, operation_timeout=30).values():
        fut.result(timeout=30)


def train_command(job_id: str, seed: int) -> dict[str, Any]:
    return {"job_id": job_id, "type": "train", "model": "dir", "algorithm": "random_forest",
            "hyperparams": {"n_estimators": 15, "max_depth": 6}, "features": FEATURES,
            "label": {"kind": "direction", "horizon": 5}, "universe": [f"T{i}" for i in range(6)],
            "start": "2012-01-01", "end": "2019-12-31", "interval": "1d",
            "data": {"source": "synthetic", "seed": seed}, "validation": {"kind": "holdout", "test_fraction": 0.2}}


def vectors(n_symbols: int = 8) -> list[dict[str, Any]]:
    """Real feature vectors (the streaming kernels over synthetic bars), complete ones and warming-up ones."""
    cmd = FeaturesCommand("v", tuple(f"P{i}" for i in range(n_symbols)), "2021-01-01", "2022-12-31",
                          DataSource("synthetic", seed=SEED))
    table = feature_table(load_synthetic(cmd), FEATURES).to_pylist()
    return [{"symbol": r["symbol"], "interval": "1d", "ts": r["ts"], "values": {n: r[n] for n in FEATURES}}
            for r in table]


def produce(kafka: KafkaConfig, topic: str, items: list[dict[str, Any]]) -> None:
    producer = Producer({**kafka.client_config(), "partitioner": "murmur2_random"})
    for v in items:
        producer.produce(topic, orjson.dumps(v), key=v["symbol"].encode())
    producer.flush(30)


def read_all(kafka: KafkaConfig, topic: str) -> list[Any]:
    c = Consumer({**kafka.client_config(), "group.id": f"r-{time.time_ns()}", "isolation.level": "read_committed",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[Any] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out += [m for m in c.consume(5000, 0.3) if m.error() is None]
        if all(tp.offset >= ends[tp.partition] for tp in c.position([TopicPartition(topic, p) for p in parts])):
            break
    c.close()
    return out


STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _stop_processes() -> Any:
    yield
    for proc in STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    STARTED.clear()


def predictor(env: dict[str, str], log: Path, idle: int | None = None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "streamquant", "run", "predictions"]
    if idle is not None:
        args += ["--stop-when-idle", str(idle)]
    STARTED.append(subprocess.Popen(args, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT))
    return STARTED[-1]


def count_predictions(kafka: KafkaConfig, topic: str) -> int:
    return len(read_all(kafka, topic))


def test_train_promote_predict_switch_versions_exactly_once(kafka: KafkaConfig, ml_env: Any, tmp_path: Path,
                                                            redis_url: str) -> None:
    prefix, env = ml_env
    plane = subprocess.Popen([sys.executable, "-m", "streamquant", "run", "jobs"], env=env,
                             stdout=(tmp_path / "plane.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        for i, seed in enumerate((SEED, SEED + 1), start=1):
            cfg = tmp_path / f"train{i}.json"
            cfg.write_bytes(orjson.dumps(train_command(f"train-{i}", seed)))
            done = sq(env, "submit", "train", str(cfg), "--wait", "--timeout", "240")
            assert done.returncode == 0, done.stdout + done.stderr + (tmp_path / "plane.log").read_text()[-3000:]
            assert f"dir v{i} registered" in done.stdout, done.stdout
    finally:
        plane.send_signal(signal.SIGTERM)
        plane.wait(30)
    listed = sq(env, "models", "list")
    assert listed.returncode == 0 and "v1, v2" in listed.stdout and "—" in listed.stdout, listed.stdout
    assert sq(env, "models", "promote", "dir", "1").returncode == 0
    shown = sq(env, "models", "show", "dir")
    assert shown.returncode == 0 and "active" in shown.stdout and "roc_auc" in shown.stdout, shown.stdout
    for field_shown in ("confusion matrix", "feature importances", "training time", "rows"):
        assert field_shown in shown.stdout, shown.stdout

    registry = read_registry(kafka, f"{prefix}models")
    scorers = {v: load_scorer(registry.get("dir", v)) for v in (1, 2)}
    items = vectors()
    complete = [v for v in items if all(x is not None for x in v["values"].values())]
    assert 2000 < len(complete) < len(items)
    third = len(items) // 3
    produce(kafka, f"{prefix}features", items[:third])
    produce(kafka, f"{prefix}features", [{**items[0], "interval": "1m"}])  # another interval: not ours
    log = tmp_path / "predictor.log"
    first = predictor(env, log)
    deadline = time.monotonic() + 120
    while count_predictions(kafka, f"{prefix}predictions") < 300:
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    produce(kafka, f"{prefix}features", items[third:2 * third])
    second = predictor(env, log, idle=20)
    while count_predictions(kafka, f"{prefix}predictions") < len(complete) // 2:
        assert second.poll() is None and time.monotonic() < deadline + 120, log.read_text()[-3000:]
        time.sleep(0.2)
    assert sq(env, "models", "promote", "dir", "2").returncode == 0
    while log.read_text().count("now serving v2") < 1:  # the running predictor picked v2 up between batches
        assert second.poll() is None and time.monotonic() < deadline + 180, log.read_text()[-3000:]
        time.sleep(0.2)
    produce(kafka, f"{prefix}features", items[2 * third:])

    # Request-reply Predict while it runs: by symbol from the online store, and what it cannot answer.
    store = OnlineStore(redis.Redis.from_url(redis_url), namespace=prefix)
    last = {v["symbol"]: v for v in complete}
    store.put_many({(s, "1d"): (v["ts"], v["values"]) for s, v in list(last.items())[:2]})
    asked = list(last)[:2]
    answer = sq(env, "predict", *asked, "--version", "1", "--timeout", "30")
    assert answer.returncode == 0, answer.stdout + answer.stderr
    want = scorers[1].predict_up(np.array([[last[s]["values"][n] for n in FEATURES] for s in asked]))
    for s, p in zip(asked, want, strict=True):
        assert f"{p:.4f}" in answer.stdout and s in answer.stdout
    missing = sq(env, "predict", "NOPE", "--timeout", "30")
    assert missing.returncode == 1 and "no 1d feature vector yet for: NOPE" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1

    second.wait(300)
    assert second.returncode == 0, log.read_text()[-3000:]

    got: dict[tuple[str, int], Any] = {}
    versions_by_partition: dict[int, list[int]] = defaultdict(list)
    for m in sorted(read_all(kafka, f"{prefix}predictions"), key=lambda m: (m.partition(), m.offset())):
        p = orjson.loads(m.value())
        key = (p["symbol"], p["ts"])
        assert key not in got, f"duplicate prediction {key}"
        got[key] = p
        versions_by_partition[m.partition()].append(p["version"])
    assert set(got) == {(v["symbol"], v["ts"]) for v in complete}
    for versions in versions_by_partition.values():
        assert versions == sorted(versions)  # v1 then v2: one switch, at a batch boundary
    assert {v for vs in versions_by_partition.values() for v in vs} == {1, 2}
    by_key = {(v["symbol"], v["ts"]): v for v in complete}
    for key, p in got.items():
        x = np.array([[by_key[key]["values"][n] for n in FEATURES]])
        assert abs(p["probability"] - float(scorers[p["version"]].predict_up(x)[0])) <= 1e-12
        assert p["signal"] == (1 if p["probability"] >= 0.55 else -1 if p["probability"] <= 0.45 else 0)

    # Tampered artifacts are refused with a clear error: with v2's and the v1 it replaced both changed, a starting
    # predictor has nothing verified to serve and stops (test_model_promotion.py: with v1 intact it serves v1).
    for version in (2, 1):
        artifact = Path(registry.get("dir", version).artifact)
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte
        artifact.write_bytes(bytes(data))
    refused = predictor(env, log, idle=5)
    refused.wait(120)
    text = log.read_text()
    assert refused.returncode == 1 and "sha256" in text.splitlines()[-1], text[-2000:]
    assert "model dir v1 refused" in text, text[-2000:]  # the fallback was tried and refused too

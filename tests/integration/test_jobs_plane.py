"""The job control plane on the real broker and Redis: `streamquant run jobs` as a subprocess.

20 jobs at once all succeed with the results the engine gives offline; invalid commands are rejected with
reasons; cancel and timeout end jobs; a repeated job id is answered, not run; identical work is answered from
the cache; and a plane killed with SIGKILL mid-job and restarted still ends every accepted job exactly once.
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

import orjson
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from processors import backtest
from schemas.codec import RecordCodec
from schemas.records import BacktestCommand
from streams.config import KafkaConfig

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "rejected"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def plane_env(admin: AdminClient, kafka: KafkaConfig, redis_url: str, unique: str, tmp_path: Path) -> Any:
    prefix = f"jp-{unique}."
    env = {**os.environ, "STREAMQUANT_TOPICS_PREFIX": prefix, "STREAMQUANT_JOBS_APP_ID": f"jp-{unique}",
           "STREAMQUANT_JOBS_WEB_PORT": str(free_port()), "STREAMQUANT_METRICS_PORT": "0",
           "STREAMQUANT_JOBS_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
           "STREAMQUANT_JOBS_CACHE_DIR": str(tmp_path / "cache"), "STREAMQUANT_JOBS_MAX_CONCURRENT": "4",
           "STREAMQUANT_KAFKA_BOOTSTRAP": kafka.bootstrap, "STREAMQUANT_REDIS_URL": redis_url}
    created = subprocess.run([sys.executable, "-m", "streamquant", "topics", "create"], env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    assert created.returncode == 0, created.stderr
    yield prefix, env
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix) or t.startswith(f"jp-{unique}")]
    for fut in admin.delete_topics(names, operation_timeout=30).values():
        fut.result(timeout=30)


def stop(plane: subprocess.Popen[bytes]) -> None:
    plane.send_signal(signal.SIGTERM)
    try:
        plane.wait(60)
    except subprocess.TimeoutExpired:
        plane.kill()
        plane.wait(30)


def start_plane(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "streamquant", "run", "jobs"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


SEED = int.from_bytes(os.urandom(4), "big")  # fresh data each run: Redis (L3) outlives test runs


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamquant", *args], env={**env, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=180, check=False)


def command(job_id: str, **overrides: Any) -> dict[str, Any]:
    cmd: dict[str, Any] = {
        "job_id": job_id, "type": "backtest", "strategy": "trend_following",
        "params": {"fast": 5, "slow": 20, "ma": "sma"}, "universe": ["S000", "S001", "S002"],
        "start": "2020-01-01", "end": "2021-12-31", "interval": "1d", "data": {"source": "synthetic", "seed": SEED},
        "fees_bps": 5, "timeout_s": 120}
    cmd.update(overrides)
    return cmd


def send(kafka: KafkaConfig, topic: str, commands: list[dict[str, Any]]) -> None:
    producer = Producer({**kafka.client_config(), "partitioner": "murmur2_random"})
    for cmd in commands:
        producer.produce(topic, orjson.dumps(cmd), key=cmd["job_id"].encode())
    producer.flush(30)


class Statuses:
    """Follows jobs.status (read_committed) and keeps every transition per job."""

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        self.consumer = Consumer({**kafka.client_config(), "group.id": f"t-{time.time_ns()}",
                                  "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        self.seen: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def poll(self) -> None:
        for m in self.consumer.consume(1000, 0.2):
            if m.error() is None:
                s = orjson.loads(m.value())  # type: ignore[arg-type]
                self.seen[s["job_id"]].append(s)

    def last(self, job_id: str) -> dict[str, Any] | None:
        return self.seen[job_id][-1] if self.seen.get(job_id) else None

    def wait(self, job_ids: list[str], until: Any, timeout_s: float, plane: subprocess.Popen[bytes] | None = None,
             log: Path | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            if all(self.last(j) is not None and until(self.last(j)) for j in job_ids):
                return
            if plane is not None and plane.poll() is not None:
                raise AssertionError(f"the plane exited: {log.read_text()[-3000:] if log else ''}")
            missing = [j for j in job_ids if not (self.last(j) and until(self.last(j)))]
            assert time.monotonic() < deadline, f"waiting for {missing[:5]}: {[self.last(j) for j in missing[:3]]}"

    def terminal_count(self, job_id: str) -> int:
        return sum(1 for s in self.seen[job_id]
                   if s["state"] in TERMINAL and "already used" not in (s.get("reason") or ""))


def read_results(kafka: KafkaConfig, topic: str) -> dict[str, list[dict[str, Any]]]:
    c = Consumer({**kafka.client_config(), "group.id": f"r-{time.time_ns()}", "isolation.level": "read_committed",
                  "auto.offset.reset": "earliest"})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for m in c.consume(1000, 0.3):
            if m.error() is None:
                r = orjson.loads(m.value())  # type: ignore[arg-type]
                out[r["job_id"]].append(r)
        # An empty partition has no position to reach: waiting for one would only run into the deadline.
        if all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0
               for tp in c.position([TopicPartition(topic, p) for p in parts])):
            break
    c.close()
    return out


def offline(cmd: dict[str, Any]) -> list[dict[str, Any]]:
    """The same command through the engine in this process."""
    record = RecordCodec(BacktestCommand).decode_obj(cmd)
    outcome = backtest.run_backtest(record, backtest.load_bars(record))
    return [{"params": dict(r.params), "metrics": dict(r.metrics)} for r in outcome.results]


def test_twenty_jobs_rejects_cancel_timeout_repeats_and_cache(kafka: KafkaConfig, plane_env: Any,
                                                             tmp_path: Path) -> None:
    prefix, env = plane_env
    log = tmp_path / "plane.log"
    plane = start_plane(env, log)
    statuses = Statuses(kafka, f"{prefix}jobs.status")
    try:
        jobs = [command(f"job-{i:02d}", params={"fast": 3 + i, "slow": 30, "ma": "sma" if i % 2 else "ema"},
                        priority=i % 10) for i in range(20)]
        bad = [command("bad-strategy", strategy="no_such_strategy"),
               command("bad-param", params={"fast": -3, "slow": 20}),
               command("bad-period", start="2021-01-01", end="2020-01-01")]
        send(kafka, f"{prefix}backtest.commands", jobs + bad)
        ids = [j["job_id"] for j in jobs]
        statuses.wait(ids + [b["job_id"] for b in bad], lambda s: s["state"] in TERMINAL, 240, plane, log)
        for j in ids:
            assert statuses.last(j)["state"] == "succeeded", statuses.seen[j]  # type: ignore[index]
            assert statuses.seen[j][0]["state"] == "queued"
            assert "running" in [s["state"] for s in statuses.seen[j]]
        for b in bad:
            last = statuses.last(b["job_id"])
            assert last is not None and last["state"] == "rejected" and last["reason"], last
        results = read_results(kafka, f"{prefix}backtest.results")
        for cmd in jobs[:4]:
            got = results[cmd["job_id"]][0]
            want = offline(cmd)
            assert [{"params": r["params"], "metrics": r["metrics"]} for r in got["results"]] == want

        # A repeated job id is answered with its stored result and never runs again.
        send(kafka, f"{prefix}backtest.commands", [jobs[0]])
        statuses.wait([ids[0]], lambda s: "already used" in (s.get("reason") or ""), 60, plane, log)
        assert {s["attempt"] for s in statuses.seen[ids[0]]} == {1}
        assert statuses.terminal_count(ids[0]) == 1
        # The same work under a new job id comes from the cache.
        send(kafka, f"{prefix}backtest.commands", [{**jobs[1], "job_id": "same-work", "priority": 0}])
        statuses.wait(["same-work"], lambda s: s["state"] in TERMINAL, 60, plane, log)
        assert statuses.last("same-work")["backend"] == "cache"  # type: ignore[index]
        assert "running" not in [s["state"] for s in statuses.seen["same-work"]]

        # Identical work submitted at once runs once; the others share its result.
        twins = [command(f"twin-{i}", params={"fast": 6, "slow": 44}, priority=i) for i in range(3)]
        send(kafka, f"{prefix}backtest.commands", twins)
        statuses.wait([t["job_id"] for t in twins], lambda s: s["state"] in TERMINAL, 60, plane, log)
        ran = [t["job_id"] for t in twins if "running" in [s["state"] for s in statuses.seen[t["job_id"]]]]
        assert len(ran) == 1 and all(statuses.last(t["job_id"])["state"] == "succeeded" for t in twins)  # type: ignore[index]
        twin_results = read_results(kafka, f"{prefix}backtest.results")
        assert len({orjson.dumps(twin_results[t["job_id"]][0]["results"]) for t in twins}) == 1

        # Cancel a long job once it runs; time out another.
        long_grid = {"fast": list(range(2, 60)), "slow": list(range(61, 161)), "ma": "sma"}
        big = {"universe": [f"S{i:03d}" for i in range(60)], "start": "2000-01-01", "end": "2023-12-31"}
        send(kafka, f"{prefix}backtest.commands", [command("to-cancel", params=long_grid, **big),
                                                   command("to-time-out", params=long_grid, timeout_s=1, **big)])
        statuses.wait(["to-cancel"], lambda s: s["state"] == "running", 60, plane, log)
        send(kafka, f"{prefix}backtest.commands", [{"job_id": "to-cancel", "type": "cancel", "reason": "test"}])
        statuses.wait(["to-cancel", "to-time-out"], lambda s: s["state"] in TERMINAL, 120, plane, log)
        assert statuses.last("to-cancel")["state"] == "cancelled"  # type: ignore[index]
        assert statuses.last("to-time-out")["state"] == "timed_out"  # type: ignore[index]
        assert all(statuses.terminal_count(j) == 1 for j in [*ids, "to-cancel", "to-time-out"])

        # The CLI: submit --wait prints the metrics; status and result read them back from Kafka.
        cfg = tmp_path / "cfg.json"
        cfg.write_bytes(orjson.dumps({k: v for k, v in command("cli-job", params={"fast": 4, "slow": 12}).items()}))
        done = cli(env, "submit", "backtest", str(cfg), "--wait", "--timeout", "120")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "cli-job" in done.stdout and "Sharpe" in done.stdout
        status = cli(env, "jobs", "status", "cli-job")
        assert status.returncode == 0 and "succeeded" in status.stdout
        result = cli(env, "jobs", "result", "cli-job")
        assert result.returncode == 0 and orjson.loads(result.stdout)["job_id"] == "cli-job"
        stats = cli(env, "cache", "stats")
        assert stats.returncode == 0 and "hit rate" in stats.stdout, stats.stderr
        cfg.write_bytes(orjson.dumps(command("cli-bad", strategy="no_such_strategy")))
        rejected = cli(env, "submit", "backtest", str(cfg), "--wait", "--timeout", "60")
        assert rejected.returncode == 1 and "rejected" in rejected.stderr and "no_such_strategy" in rejected.stderr
        assert "Traceback" not in rejected.stderr
        # A features job: the feature table as a Parquet artifact.
        cfg.write_bytes(orjson.dumps({"job_id": "feat-job", "type": "features", "universe": ["S000", "S001"],
                                      "start": "2020-01-01", "end": "2020-12-31", "interval": "1d",
                                      "data": {"source": "synthetic", "seed": SEED}, "features": ["rsi_14", "obv"]}))
        feats = cli(env, "submit", "features", str(cfg), "--wait", "--timeout", "120")
        assert feats.returncode == 0 and "features.parquet" in feats.stdout, feats.stdout + feats.stderr
        table = pq.read_table(orjson.loads(cli(env, "jobs", "result", "feat-job").stdout)["artifact"])
        assert table.column_names == ["symbol", "ts", "open", "high", "low", "close", "volume", "rsi_14", "obv"]
        missing = cli(env, "jobs", "status", "never-submitted")
        assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    finally:
        stop(plane)
        statuses.consumer.close()


def test_plane_killed_mid_job_and_restarted_ends_every_job_exactly_once(kafka: KafkaConfig, plane_env: Any,
                                                                        tmp_path: Path) -> None:
    prefix, env = plane_env
    log = tmp_path / "plane.log"
    plane = start_plane(env, log)
    statuses = Statuses(kafka, f"{prefix}jobs.status")
    # About a second of work each on one core: long enough to be running at the kill, short enough for CI.
    grid = {"fast": list(range(2, 20)), "slow": list(range(41, 61)), "ma": "sma"}
    big = {"universe": [f"S{i:03d}" for i in range(40)], "start": "2005-01-01", "end": "2023-12-31",
           "timeout_s": 600}
    jobs = [command(f"kill-{i}", params=grid, data={"source": "synthetic", "seed": SEED + i}, **big) for i in range(6)]
    ids = [j["job_id"] for j in jobs]
    try:
        send(kafka, f"{prefix}backtest.commands", jobs)
        statuses.wait(ids[:1], lambda s: s["state"] == "running", 120, plane, log)
        plane.send_signal(signal.SIGKILL)
        plane.wait()
        plane = start_plane(env, log)
        statuses.wait(ids, lambda s: s["state"] in TERMINAL, 150, plane, log)
        for j in ids:
            states = [s["state"] for s in statuses.seen[j]]
            assert states[-1] == "succeeded", states
            assert statuses.terminal_count(j) == 1, states
        results = read_results(kafka, f"{prefix}backtest.results")
        assert all(len(results[j]) == 1 for j in ids), {j: len(results[j]) for j in ids}
        assert any(s["attempt"] > 1 for j in ids for s in statuses.seen[j]), "no job was running at the kill"
    finally:
        stop(plane)
        statuses.consumer.close()

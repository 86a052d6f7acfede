"""The fault suite: the faults production meets, injected into the real local stack, bounded in time.

1. Feature processor: one instance frozen (SIGSTOP) past its session timeout while a second takes over,
   then resumed (a zombie: its transactions must not land); 10,000 fuzzed bad messages mixed into the tick
   stream. Outputs must equal the offline computation exactly, with every bad message in the DLQ.
2. Feature processor: the broker SIGKILLed mid-stream and restarted; outputs exact again (expected to fail
   only where the broker's log shows it dropped a prepared commit's markers: see the test).
3. Job plane: Redis stopped while jobs run (the cache's L3 fails, counted; jobs still finish); a job
   worker process killed mid-job (its job ends `failed` with the reason); every accepted job terminal.

These need the stack started by `streamquant dev up` (they stop and restart its processes by pid file).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.codec import InvalidMessage
from schemas.ticks import decode_tick
from streams.config import KafkaConfig
from tests.integration.test_feature_processor import (
    BAD,
    assert_exact,
    committed_total,
    produce_stream,
    start,
)

# The fixtures, re-exported so pytest finds them here.
from tests.integration.test_feature_processor import stack as stack
from tests.integration.test_jobs_plane import (
    TERMINAL,
    Statuses,
    command,
    send,
    start_plane,
    stop,
)
from tests.integration.test_jobs_plane import plane_env as plane_env

RUN = Path(".devstack/run")
FUZZ = 10_000


def owned_pid(name: str) -> int:
    path = RUN / f"{name}.pid"
    if not path.exists():
        pytest.fail(f"the fault suite stops and restarts the local stack's {name}: start it with `make up` "
                    f"(no {path})")
    return int(path.read_text().strip())


def worker_pids(parent: int) -> list[int]:
    """The plane's spawned job workers (children running multiprocessing's spawn_main)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            out.append(int(proc.name))
    return out


def restart_stack() -> None:
    done = subprocess.run([sys.executable, "-m", "streamquant", "dev", "up"], capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def fuzzed_ticks(n: int, seed: int = 5) -> list[bytes]:
    """Bad messages of every kind the decoder must reject (each checked against the reference decoder)."""
    rnd = random.Random(seed)
    good = {"symbol": "S001", "ts": 1_767_225_600_000, "price": 101.5, "size": 3}
    makers = [
        lambda: rnd.randbytes(rnd.randint(1, 64)),
        lambda: json.dumps(good).encode()[: rnd.randint(1, 40)],
        lambda: json.dumps({**good, "price": rnd.choice([-1, 0, "1", None, float("nan")])}).encode(),
        lambda: json.dumps({**good, "ts": rnd.choice([1, 10**18, "x", 1.5])}).encode(),
        lambda: json.dumps({**good, "symbol": rnd.choice(["", "a b", "x" * 40, 7])}).encode(),
        lambda: json.dumps({k: v for k, v in good.items() if k != rnd.choice(list(good))}).encode(),
        lambda: json.dumps({**good, "extra": 1}).encode(),
        lambda: json.dumps([good]).encode(),
    ]
    out: list[bytes] = []
    while len(out) < n:
        candidate = rnd.choice(makers)()
        try:
            decode_tick(candidate)
        except (InvalidMessage, ValueError):
            out.append(candidate)
    return out


def test_feature_processor_through_a_zombie_and_fuzz(kafka: KafkaConfig, stack: Any) -> None:
    prefix, env = stack
    produce_stream(kafka, f"{prefix}ticks", 40_000)
    fuzz = fuzzed_ticks(FUZZ)
    producer = Producer({**kafka.client_config(), "partitioner": "murmur2_random"})
    for i, bad in enumerate(fuzz):
        producer.produce(f"{prefix}ticks", bad, key=f"S{i % 40:03d}".encode())
    producer.flush(30)
    total = 40_000 + len(BAD) + FUZZ
    group = env["STREAMQUANT_FEATURES_GROUP"]

    a = start(env, "a", idle_s=25)
    deadline = time.monotonic() + 180
    while committed_total(kafka, group, f"{prefix}ticks") < 0.3 * total:
        assert a.poll() is None and time.monotonic() < deadline, "no progress"
        time.sleep(0.1)
    a.send_signal(signal.SIGSTOP)  # frozen past its 6 s session timeout: b takes everything over
    b = start(env, "b", idle_s=25)
    time.sleep(10)
    a.send_signal(signal.SIGCONT)  # the zombie wakes up, possibly mid-transaction
    out_a, _ = a.communicate(timeout=400)
    out_b, _ = b.communicate(timeout=400)
    assert a.returncode == 0, out_a[-3000:]
    assert b.returncode == 0, out_b[-3000:]
    try:
        assert committed_total(kafka, group, f"{prefix}ticks") == total
        assert_exact(kafka, prefix, extra_dead_letters=fuzz)
    except AssertionError as err:  # both instances' logs say what happened at the takeover
        raise AssertionError(f"{err}\n--- a (frozen) ---\n{out_a[-4000:]}\n--- b ---\n{out_b[-4000:]}") from None


SKIPPED_MARKERS = "Couldn't find leader endpoint for partitions"


def test_feature_processor_through_a_broker_killed_mid_stream(kafka: KafkaConfig, stack: Any) -> None:
    """The broker SIGKILLed while the processor commits batches, restarted a few seconds later. The open
    transaction is lost with it; the processor must get going again by itself (librdkafka's
    send_offsets_to_transaction can block past its timeout after a broker restart: the sink replaces a
    stalled producer) and the outputs must still equal the offline computation exactly.

    One broker failure is not ours to fix, and the test says so rather than passing or failing on it: a
    transaction whose commit was prepared when the broker died has its markers sent again at restart, and
    the transaction coordinator drops the markers of any partition it cannot find a leader for right then
    ("Couldn't find leader endpoint ... likely deleted already and hence can be skipped"). That partition's
    part of a committed transaction stays open until a later marker of the same producer ends it, possibly
    as an abort: committed bars vanish (seen in CI: 55 bars of one partition). Only when the broker's log shows
    that skip for this test's partitions does a failure become an expected one."""
    prefix, env = stack
    log = Path(".devstack/logs/kafka.log")
    log_from = log.stat().st_size if log.exists() else 0
    produce_stream(kafka, f"{prefix}ticks", 40_000)
    total = 40_000 + len(BAD)
    group = env["STREAMQUANT_FEATURES_GROUP"]
    proc = start(env, "a", idle_s=20)
    deadline = time.monotonic() + 180
    while committed_total(kafka, group, f"{prefix}ticks") < 0.2 * total:
        assert proc.poll() is None and time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    os.kill(owned_pid("kafka"), signal.SIGKILL)
    time.sleep(3)
    restart_stack()
    out, _ = proc.communicate(timeout=400)
    try:
        assert proc.returncode == 0, out[-3000:]
        assert committed_total(kafka, group, f"{prefix}ticks") == total
        assert_exact(kafka, prefix)
    except AssertionError as err:
        skipped = broker_skipped_markers(log, log_from, prefix)
        if skipped:
            pytest.xfail(f"the broker dropped the commit markers of a prepared transaction at restart: {skipped[0]}")
        raise AssertionError(f"{err}\n--- processor ---\n{out[-4000:]}") from None


def broker_skipped_markers(log: Path, start: int, prefix: str) -> list[str]:
    """The broker log's lines (since `start`) saying it skipped transaction markers for this test's topics."""
    if not log.exists():
        return []
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    return [line[:300] for line in text.splitlines() if SKIPPED_MARKERS in line and prefix in line]


def test_jobs_with_redis_down_and_a_worker_killed(kafka: KafkaConfig, plane_env: Any, tmp_path: Path) -> None:
    prefix, env = plane_env
    redis_pid = owned_pid("redis")
    log = tmp_path / "plane.log"
    plane = start_plane(env, log)
    statuses = Statuses(kafka, f"{prefix}jobs.status")
    grid = {"fast": list(range(2, 30)), "slow": list(range(31, 81)), "ma": "sma"}
    big = {"universe": [f"S{i:03d}" for i in range(40)], "start": "2005-01-01", "end": "2023-12-31"}
    try:
        os.kill(redis_pid, signal.SIGKILL)  # Redis goes away while jobs come in
        jobs = [command(f"f-{i}", params={"fast": 3 + i, "slow": 40}) for i in range(4)]
        victim = command("victim", params=grid, **big)
        send(kafka, f"{prefix}backtest.commands", [*jobs, victim])
        statuses.wait(["victim"], lambda s: s["state"] == "running", 120, plane, log)
        for pid in worker_pids(plane.pid):  # one runs the victim; others may run small jobs (they fail too)
            os.kill(pid, signal.SIGKILL)
        ids = [j["job_id"] for j in jobs] + ["victim"]
        statuses.wait(ids, lambda s: s["state"] in TERMINAL, 180, plane, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{env['STREAMQUANT_JOBS_WEB_PORT']}/cache/stats",
                                    timeout=5) as r:
            stats = orjson.loads(r.read())
        assert stats["tiers"]["l3"]["errors"] > 0  # Redis failures counted, not raised
        restart_stack()
        # Every job ended; the jobs whose worker was killed say so.
        ended = {j: statuses.last(j) for j in ids}
        assert all(s is not None and s["state"] in TERMINAL for s in ended.values()), ended
        victim_status = ended["victim"]
        assert victim_status is not None and victim_status["state"] == "failed"
        assert "worker process died" in victim_status["reason"]
        assert all(statuses.terminal_count(j) == 1 for j in ids)
        # The plane still works with Redis back.
        send(kafka, f"{prefix}backtest.commands", [command("after", params={"fast": 9, "slow": 30})])
        statuses.wait(["after"], lambda s: s["state"] == "succeeded", 120, plane, log)
    finally:
        if owned_pid("redis") == redis_pid:
            restart_stack()
        stop(plane)
        statuses.consumer.close()

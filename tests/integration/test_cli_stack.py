"""The CLI against the running stack: status, topics, produce (synthetic and replay) and tail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from confluent_kafka.admin import AdminClient

from streams.config import KafkaConfig
from streams.sink import KafkaSink


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamquant", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250", **env}, timeout=120, check=False)


def test_dev_status_reports_both_services_up() -> None:
    result = cli("dev", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" up ") >= 2


def test_topics_produce_and_tail_under_a_prefix(admin: AdminClient, kafka: KafkaConfig, unique: str,
                                                tmp_path: Path) -> None:
    prefix = f"cli-{unique}."
    env = {"STREAMQUANT_TOPICS_PREFIX": prefix, "STREAMQUANT_TOPICS_DATA_PARTITIONS": "2"}
    try:
        created = cli("topics", "create", **env)
        assert created.returncode == 0, created.stderr
        assert f"created {prefix}ticks" in created.stdout
        again = cli("topics", "create", **env)
        assert again.returncode == 0 and "created" not in again.stdout

        produced = cli("produce", "ticks", "--symbols", "5", "--count", "300", "--rate", "0", "--seed", "3", **env)
        assert produced.returncode == 0, produced.stderr
        assert "300/300" in produced.stdout and "all delivered" in produced.stdout

        avro = cli("produce", "ticks", "--count", "5", "--rate", "0", "--format", "avro", **env)
        assert avro.returncode == 0, avro.stderr

        replay = tmp_path / "ticks.csv"
        replay.write_text("symbol,ts,price,size,exchange\nZZZ,1700000000000,10.5,7,XNAS\n")
        replayed = cli("produce", "ticks", "--from-file", str(replay), **env)
        assert replayed.returncode == 0, replayed.stderr

        tailed = cli("tail", "ticks", "-n", "400", **env)
        assert tailed.returncode == 0, tailed.stderr
        lines = [line for line in tailed.stdout.splitlines() if '"symbol"' in line]
        assert len(lines) == 306
        assert "undecodable" not in tailed.stdout
        assert any('"symbol":"ZZZ"' in line and '"exchange":"XNAS"' in line for line in lines)

        # A dead letter shows with its reason and origin.
        sink = KafkaSink(kafka)
        sink.write(f"{prefix}ticks.dlq", b"K", b"{broken", [("sq.error.class", b"not_json"),
                                                          ("sq.error.reason", b"not valid JSON: x"),
                                                          ("sq.source.topic", f"{prefix}ticks".encode()),
                                                          ("sq.source.partition", b"1"),
                                                          ("sq.source.offset", b"42")])
        sink.flush()
        dlq = cli("tail", "ticks.dlq", **env)
        assert dlq.returncode == 0, dlq.stderr
        assert f"not_json: not valid JSON: x (from {prefix}ticks:1:42)" in dlq.stdout
    finally:
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                fut.result(timeout=30)


def test_produce_to_a_missing_topic_is_a_clear_error(unique: str) -> None:
    result = cli("produce", "ticks", "--count", "1", "--rate", "0", STREAMQUANT_TOPICS_PREFIX=f"missing-{unique}.")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "does not exist" in result.stderr and "topics create" in result.stderr

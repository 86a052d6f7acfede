"""The dev stack only ever stops what it started, and writes a KRaft config the broker accepts."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from streamquant.devstack import SERVER_PROPERTIES, DevStack, java_major, new_cluster_id
from streamquant.settings import DevSettings, RedisSettings


def test_cluster_id_is_16_bytes_urlsafe_base64_without_padding() -> None:
    cid = new_cluster_id()
    assert "=" not in cid and len(cid) == 22
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16
    # One in 64 raw ids starts with "-", which the storage tool's argument parser takes for an option.
    assert not any(new_cluster_id().startswith("-") for _ in range(2000))


def test_server_properties_are_single_node_kraft() -> None:
    text = SERVER_PROPERTIES.format(kafka_port=19092, controller_port=19093, data_dir="/d")
    props = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "share.coordinator.state.topic.replication.factor",
                "share.coordinator.state.topic.min.isr"):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_down_leaves_a_process_it_did_not_start_alone(tmp_path: Path) -> None:
    stack = DevStack(DevSettings(home=tmp_path / "home", cache=tmp_path / "cache", kafka_port=1, redis_port=1),
                     RedisSettings())
    stack.run_dir.mkdir(parents=True)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        # A stale pid file whose pid now belongs to some other program.
        (stack.run_dir / "kafka.pid").write_text(f"{stranger.pid}\n")
        (stack.run_dir / "redis.pid").write_text("999999999\n")
        assert stack.down() == []
        assert stranger.poll() is None, "down() killed a process that is not ours"
        assert not (stack.run_dir / "kafka.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize(("output", "major"), [
    ('openjdk version "17.0.9" 2023-10-17\nOpenJDK Runtime Environment (build 17.0.9+9-Debian-1deb12u1)', 17),
    ('openjdk version "21" 2023-09-19', 21),
    ('java version "1.8.0_392"', 8),
    ("no version here", None),
])
def test_java_major_version_is_read_from_java_version(output: str, major: int | None) -> None:
    assert java_major(output) == major

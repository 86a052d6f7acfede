"""Integration fixtures: the real broker and Redis, uuid-named topics and groups.

The broker comes from STREAMQUANT_KAFKA_BOOTSTRAP when set (CI sets it after `make up`), else from
testcontainers when a Docker engine answers, else every integration test fails and says how to
start the local stack; Redis likewise from STREAMQUANT_REDIS_URL or testcontainers. They never skip. (The
testcontainers route is not exercised here: this machine has no Docker engine.)
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import KafkaConfig

HOW_TO = ("start the local stack with `make up` (it sets nothing in your shell) and run "
          "`STREAMQUANT_KAFKA_BOOTSTRAP=127.0.0.1:9092 STREAMQUANT_REDIS_URL=redis://127.0.0.1:6379/0 make test`, "
          "or run `make test`, which points at the local stack by default")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # any failure means "no engine here"
        return False


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    env = os.environ.get("STREAMQUANT_KAFKA_BOOTSTRAP")
    if env:
        admin = AdminClient({"bootstrap.servers": env, "log_level": 2})
        try:
            admin.list_topics(timeout=10)
        except KafkaException:
            pytest.fail(f"STREAMQUANT_KAFKA_BOOTSTRAP={env} does not answer; {HOW_TO}")
        yield env
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.0").with_kraft() as kafka:
            server = kafka.get_bootstrap_server()
            os.environ["STREAMQUANT_KAFKA_BOOTSTRAP"] = server  # processors run as subprocesses read it
            yield server
        return
    pytest.fail(f"no Kafka broker: STREAMQUANT_KAFKA_BOOTSTRAP is not set and no Docker engine answers; {HOW_TO}")


@pytest.fixture(scope="session")
def kafka(bootstrap: str) -> KafkaConfig:
    return KafkaConfig(bootstrap=bootstrap, client_id="streamquant-tests")


@pytest.fixture(scope="session")
def admin(kafka: KafkaConfig) -> AdminClient:
    return AdminClient(kafka.client_config())


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """STREAMQUANT_REDIS_URL when set, else a Redis from testcontainers when a Docker engine answers."""
    url = os.environ.get("STREAMQUANT_REDIS_URL")
    if not url:
        if not _docker_answers():
            pytest.fail(f"STREAMQUANT_REDIS_URL is not set and no Docker engine answers; {HOW_TO}")
        from testcontainers.community.redis import RedisContainer

        with RedisContainer("redis:7.4") as container:
            url = f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
            os.environ["STREAMQUANT_REDIS_URL"] = url  # tests and processors read it from the environment
            yield url
        return
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"Redis at {url} does not answer; {HOW_TO}")
    finally:
        client.close()
    yield url


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def make_topic(admin: AdminClient, unique: str) -> Iterator[object]:
    created: list[str] = []

    def make(name: str, partitions: int = 1, config: dict[str, str] | None = None) -> str:
        full = f"test-{unique}-{name}"
        futures = admin.create_topics([NewTopic(full, partitions, 1, config=config or {})], operation_timeout=30)
        futures[full].result(timeout=30)
        created.append(full)
        return full

    yield make
    if created:
        for fut in admin.delete_topics(created, operation_timeout=30).values():
            with contextlib.suppress(KafkaException):
                fut.result(timeout=30)

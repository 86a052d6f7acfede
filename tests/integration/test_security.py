"""Security against the secured local broker (`streamquant dev up --secure`: SASL_SSL, SCRAM-SHA-512, ACLs).

Each test gets its own topic prefix, consumer groups and job app id, with the ACLs `acl_plan` gives them
(applied as `admin`), so what a principal may do is exactly what the product grants. Checked: every processor
works over SASL_SSL as its own principal; a wrong password fails fast with one line; a principal without
a write ACL is refused and the processor says so instead of looping; no secret appears in any output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion
from pydantic import SecretStr

from processors.synthetic import MarketSpec, TickGenerator
from schemas.ticks import encode_columns
from streamquant.devstack import DevStack
from streamquant.secure_stack import Grant, acl_plan, apply_acls
from streamquant.settings import load_settings
from streams.config import KafkaConfig
from streams.sink import KafkaSink
from streams.topics import CatalogOptions, TopicCatalog, ensure_topics
from tests.integration.test_models import SEED, free_port, train_command

SECRETS = Path(".devstack/secure")


def principal_env(principal: str) -> dict[str, str]:
    out = {}
    for line in (SECRETS / f"{principal}.env").read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value
    return out


@pytest.fixture(scope="module")
def stack() -> DevStack:
    """The secured broker, started (idempotently) the way a user starts it."""
    done = subprocess.run([sys.executable, "-m", "streamquant", "dev", "up", "--secure"], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    settings = load_settings(None)
    return DevStack(settings.dev, settings.redis)


@pytest.fixture
def secure(stack: DevStack, unique: str, tmp_path: Path, redis_url: str) -> Any:
    prefix = f"sec-{unique}."
    names = {"features": f"sec-feat-{unique}", "predictions": f"sec-pred-{unique}", "jobs": f"sec-jobs-{unique}"}
    catalog = TopicCatalog(CatalogOptions(prefix=prefix, data_partitions=2, command_partitions=2))
    admin_cfg = stack.secure_config("admin")
    admin = AdminClient(admin_cfg.client_config())
    ensure_topics(admin, catalog.specs(), 1)
    apply_acls(admin, acl_plan(catalog, features_group=names["features"], predictions_group=names["predictions"],
                               jobs_app_id=names["jobs"], topic_prefix=prefix))
    common = {"STREAMQUANT_TOPICS_PREFIX": prefix, "STREAMQUANT_TOPICS_DATA_PARTITIONS": "2",
              "STREAMQUANT_TOPICS_COMMAND_PARTITIONS": "2", "STREAMQUANT_FEATURES_GROUP": names["features"],
              "STREAMQUANT_PREDICTIONS_GROUP": names["predictions"], "STREAMQUANT_JOBS_APP_ID": names["jobs"],
              "STREAMQUANT_METRICS_PORT": "0", "STREAMQUANT_REDIS_URL": redis_url, "COLUMNS": "200"}
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQUANT_")}
    env = {p: {**base, **common, **principal_env(p)} for p in ("features", "predictions", "jobs", "client")}
    yield prefix, env, admin_cfg, admin, tmp_path
    doomed = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix) or t.startswith(names["jobs"])]
    for fut in admin.delete_topics(doomed, operation_timeout=30).values():
        fut.result(timeout=30)


def sq(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamquant", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def passwords() -> list[str]:
    return list(orjson.loads((SECRETS / "credentials.json").read_bytes()).values())


def assert_no_secret(*outputs: str) -> None:
    for text in outputs:
        for secret in passwords():
            assert secret not in text, "a password appears in the output"


def count(config: KafkaConfig, topic: str) -> int:
    c = Consumer({**config.client_config(), "group.id": "unused", "isolation.level": "read_committed"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def test_every_processor_over_sasl_ssl_as_its_own_principal(secure: Any, stack: DevStack) -> None:
    prefix, env, admin_cfg, _admin, tmp = secure
    outputs: list[str] = []

    # Ticks in as the client (40 a second of event time: minutes of 1s bars), the feature processor as `features`.
    gen = TickGenerator(MarketSpec(symbols=2, seed=SEED, rate=40, start_ms=1_767_225_600_000))
    sink = KafkaSink(stack.secure_config("client"))
    chunk = gen.next_chunk(20_000)
    sink.write_many(f"{prefix}ticks", [s.encode() for s in chunk.symbol()], encode_columns(chunk))
    sink.flush()
    feats = sq(env["features"], "run", "features", "--stop-when-idle", "6")
    outputs.append(feats.stdout + feats.stderr)
    assert feats.returncode == 0, outputs[-1][-3000:]
    assert count(admin_cfg, f"{prefix}bars") > 300 and count(admin_cfg, f"{prefix}features") > 300

    # A model trained through the job plane (as `jobs`), submitted and promoted by the client.
    plane_env = {**env["jobs"], "STREAMQUANT_JOBS_WEB_PORT": str(free_port()),
                 "STREAMQUANT_JOBS_ARTIFACT_ROOT": str(tmp / "artifacts"), "STREAMQUANT_JOBS_CACHE_DIR": str(tmp / "c")}
    plane_log = tmp / "plane.log"
    plane = subprocess.Popen([sys.executable, "-m", "streamquant", "run", "jobs"], env=plane_env,
                             stdout=plane_log.open("wb"), stderr=subprocess.STDOUT)
    try:
        cfg = tmp / "train.json"
        cfg.write_bytes(orjson.dumps({**train_command("sec-train", SEED), "model": "secdir"}))
        client = {**env["client"], "STREAMQUANT_JOBS_ARTIFACT_ROOT": str(tmp / "artifacts")}
        trained = sq(client, "submit", "train", str(cfg), "--wait", "--timeout", "200")
        outputs.append(trained.stdout + trained.stderr)
        assert trained.returncode == 0, outputs[-1][-2000:] + plane_log.read_text()[-3000:]
    finally:
        plane.terminate()
        plane.wait(60)
    outputs.append(plane_log.read_text())
    promoted = sq(env["client"], "models", "promote", "secdir", "1")
    outputs.append(promoted.stdout + promoted.stderr)
    assert promoted.returncode == 0, outputs[-1]

    # The prediction processor, as `predictions`, scores the vectors the feature processor wrote.
    pred_env = {**env["predictions"], "STREAMQUANT_PREDICTIONS_MODEL": "secdir",
                "STREAMQUANT_PREDICTIONS_INTERVAL": "1s", "STREAMQUANT_JOBS_ARTIFACT_ROOT": str(tmp / "artifacts")}
    predicted = sq(pred_env, "run", "predictions", "--stop-when-idle", "8")
    outputs.append(predicted.stdout + predicted.stderr)
    assert predicted.returncode == 0, outputs[-1][-3000:]
    assert count(admin_cfg, f"{prefix}predictions") > 100
    assert_no_secret(*outputs)


def test_a_wrong_password_fails_fast_with_one_line(secure: Any) -> None:
    _prefix, env, *_ = secure
    wrong = {**env["features"], "STREAMQUANT_KAFKA_SASL_PASSWORD": "not-the-password"}
    started = time.monotonic()
    done = sq(wrong, "run", "features", "--stop-when-idle", "5", timeout=60)
    elapsed = time.monotonic() - started
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stdout + done.stderr
    assert "rejected the login of user 'features'" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr and "not-the-password" not in done.stdout + done.stderr
    assert elapsed < 20, f"took {elapsed:.1f}s to fail"


def test_a_principal_without_a_write_acl_is_refused_clearly(secure: Any, unique: str) -> None:
    """A feature processor whose principal may read ticks but write nothing stops with one clear line."""
    prefix, env, admin_cfg, admin, _tmp = secure
    user, password = f"nowrite-{unique}", f"pw-{unique}"
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                      password.encode())])
    for fut in futures.values():
        fut.result(30)
    group = env["features"]["STREAMQUANT_FEATURES_GROUP"]
    grants = [Grant(user, "topic", f"{prefix}ticks", "literal", "read"),
              Grant(user, "topic", f"{prefix}features.changelog", "literal", "read"),
              Grant(user, "group", group, "literal", "read"),
              Grant(user, "group", "streamquant-restore-", "prefixed", "read"),
              Grant(user, "transactional_id", f"{group}-", "prefixed", "write")]
    apply_acls(admin, grants)
    produced = sq(env["client"], "produce", "ticks", "--count", "2000", "--symbols", "2")
    assert produced.returncode == 0, produced.stderr
    no_write = {**env["features"], "STREAMQUANT_KAFKA_SASL_USERNAME": user, "STREAMQUANT_KAFKA_SASL_PASSWORD": password}
    deadline = time.monotonic() + 60
    login_visible = False
    while not login_visible:  # SCRAM credentials reach the broker's cache asynchronously
        try:
            login = admin_cfg.model_copy(update={"sasl_username": user, "sasl_password": SecretStr(password)})
            AdminClient(login.client_config()).list_topics(timeout=3)
            login_visible = True
        except KafkaException:
            assert time.monotonic() < deadline, "the new SCRAM user never became usable"
    done = sq(no_write, "run", "features", "--stop-when-idle", "10", timeout=120)
    out = done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1, out[-3000:]
    assert len(errors) == 1 and "refused by the broker's ACLs" in errors[0], out[-3000:]
    assert f"{prefix}bars" in errors[0] or f"{prefix}features" in errors[0], errors[0]  # it names what
    assert "Traceback" not in out and password not in out
    assert_no_secret(out)

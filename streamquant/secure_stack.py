"""The secured local broker of `streamquant dev up --secure`: SASL_SSL with SCRAM-SHA-512 and ACLs.

A second single-node KRaft broker beside the plain one (its own ports, data and log), so the plain stack
and its tests keep working. On first start it generates, under `.devstack/secure/`:
- a CA and a broker certificate (SAN IP:127.0.0.1, DNS:localhost) with the JDK's `keytool`; clients trust
  `ca.pem`;
- a random password per principal (`credentials.json`, mode 0600) and one `<principal>.env` per principal
  with the `STREAMQUANT_KAFKA_*` settings that log in as it (mode 0600; `set -a; . file` or `env $(cat file)`);
- SCRAM-SHA-512 credentials, written into the metadata log when the storage is formatted (so they exist
  before the broker accepts its first login, its own inter-broker one included).

Listeners: SASL_SSL on 127.0.0.1:`secure_kafka_port` for clients and between brokers (as `admin`); the
controller listener on `secure_controller_port` is TLS with client certificates required, so only a holder
of a certificate signed by the CA (the broker itself, principal `User:broker`) gets in. The
StandardAuthorizer denies what no ACL allows; `admin` and `broker` are super users. Each service principal
gets the ACLs its processor needs and nothing more (`acl_plan`, the table in the README).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from pydantic import SecretStr

from streams.config import KafkaConfig
from streams.topics import TopicCatalog

PRINCIPALS = ("admin", "features", "predictions", "jobs", "client")
SERVICE_PRINCIPALS = PRINCIPALS[1:]

# What every single-node dev broker sets, plain or secured (replication factors of 1, no auto-created topics).
SINGLE_NODE_PROPERTIES = """\
log.dirs={data_dir}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.check.interval.ms=60000
"""

# Eligible leader replicas (KIP-966, on by default in Kafka 4.x) treat a broker back from a crash as unclean:
# every partition of a single node then waits (1-10 s in our logs) for an *unclean* election, which Kafka
# documents can lose transaction markers. A process kill leaves the only copy of each log intact (the page
# cache survives), so here the feature only turns every broker crash into unclean elections. Off, the
# restarted broker leads its partitions again as soon as it is unfenced.
SINGLE_NODE_FORMAT_ARGS = ["--feature", "eligible.leader.replicas.version=0"]

SECURE_SERVER_PROPERTIES = """\
# Written by `streamquant dev up --secure`: single-node KRaft, SASL_SSL + SCRAM-SHA-512, ACLs.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=SASL_SSL://127.0.0.1:{kafka_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{kafka_port},CONTROLLER://127.0.0.1:{controller_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule \
required username="admin" password="{admin_password}";
listener.name.controller.ssl.client.auth=required
ssl.keystore.type=PKCS12
ssl.keystore.location={keystore}
ssl.keystore.password={store_password}
ssl.key.password={store_password}
ssl.truststore.type=PKCS12
ssl.truststore.location={truststore}
ssl.truststore.password={store_password}
ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:broker
allow.everyone.if.no.acl.found=false
""" + SINGLE_NODE_PROPERTIES


class SecureSetupError(Exception):
    """Generating certificates or credentials failed."""


@dataclass(frozen=True)
class SecureFiles:
    root: Path

    @property
    def ca_pem(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_store(self) -> Path:
        return self.root / "ca.p12"

    @property
    def keystore(self) -> Path:
        return self.root / "broker.p12"

    @property
    def truststore(self) -> Path:
        return self.root / "truststore.p12"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.json"

    def env_file(self, principal: str) -> Path:
        return self.root / f"{principal}.env"


def _private_write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def ensure_credentials(files: SecureFiles) -> dict[str, str]:
    """A random password per principal (and one for the key stores), created once."""
    files.root.mkdir(parents=True, exist_ok=True)
    os.chmod(files.root, 0o700)
    if files.credentials.exists():
        loaded: dict[str, str] = json.loads(files.credentials.read_text())
        return loaded
    creds = {p: secrets.token_hex(16) for p in (*PRINCIPALS, "_stores")}
    _private_write(files.credentials, json.dumps(creds, indent=2) + "\n")
    return creds


def client_config(files: SecureFiles, bootstrap: str, principal: str, creds: dict[str, str]) -> KafkaConfig:
    return KafkaConfig(bootstrap=bootstrap, client_id=f"streamquant-{principal}", security_protocol="SASL_SSL",
                       sasl_mechanism="SCRAM-SHA-512", sasl_username=principal,
                       sasl_password=SecretStr(creds[principal]), ssl_ca_location=str(files.ca_pem))


def write_env_files(files: SecureFiles, bootstrap: str, creds: dict[str, str]) -> None:
    for principal in PRINCIPALS:
        lines = [f"STREAMQUANT_KAFKA_BOOTSTRAP={bootstrap}", "STREAMQUANT_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
                 "STREAMQUANT_KAFKA_SASL_MECHANISM=SCRAM-SHA-512", f"STREAMQUANT_KAFKA_SASL_USERNAME={principal}",
                 f"STREAMQUANT_KAFKA_SASL_PASSWORD={creds[principal]}",
                 f"STREAMQUANT_KAFKA_SSL_CA_LOCATION={files.ca_pem}"]
        _private_write(files.env_file(principal), "\n".join(lines) + "\n")


def ensure_certificates(files: SecureFiles, store_password: str) -> None:
    """CA and broker certificate (once), with the JDK's keytool."""
    if files.keystore.exists() and files.truststore.exists() and files.ca_pem.exists():
        return
    keytool = shutil.which("keytool") or (str(Path(os.environ["JAVA_HOME"]) / "bin" / "keytool")
                                          if os.environ.get("JAVA_HOME") else None)
    if keytool is None:
        raise SecureSetupError("keytool (part of the JDK) is not on PATH; install a JDK 17")
    for f in (files.keystore, files.truststore, files.ca_store, files.ca_pem):
        f.unlink(missing_ok=True)
    csr, crt = files.root / "broker.csr", files.root / "broker.crt"
    pw = ["-storepass", store_password, "-keypass", store_password]
    key = ["-keyalg", "EC", "-groupname", "secp256r1", "-validity", "365", "-storetype", "PKCS12"]
    steps = [
        ["-genkeypair", "-alias", "ca", "-dname", "CN=streamquant-dev-ca", *key, "-ext", "bc:c",
         "-keystore", str(files.ca_store), *pw],
        ["-exportcert", "-rfc", "-alias", "ca", "-keystore", str(files.ca_store), "-storepass", store_password,
         "-file", str(files.ca_pem)],
        ["-genkeypair", "-alias", "broker", "-dname", "CN=broker", *key, "-keystore", str(files.keystore), *pw],
        ["-certreq", "-alias", "broker", "-keystore", str(files.keystore), "-storepass", store_password,
         "-file", str(csr)],
        ["-gencert", "-alias", "ca", "-keystore", str(files.ca_store), "-storepass", store_password,
         "-infile", str(csr), "-outfile", str(crt), "-rfc", "-validity", "365",
         "-ext", "san=ip:127.0.0.1,dns:localhost", "-ext", "eku=serverAuth,clientAuth"],
        ["-importcert", "-noprompt", "-alias", "ca", "-file", str(files.ca_pem), "-keystore", str(files.keystore),
         "-storepass", store_password],
        ["-importcert", "-noprompt", "-alias", "broker", "-file", str(crt), "-keystore", str(files.keystore),
         "-storepass", store_password],
        ["-importcert", "-noprompt", "-alias", "ca", "-file", str(files.ca_pem), "-keystore", str(files.truststore),
         "-storetype", "PKCS12", "-storepass", store_password],
    ]
    for args in steps:
        done = subprocess.run([keytool, *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            out = (done.stdout + done.stderr).replace(store_password, "***").strip().splitlines()
            raise SecureSetupError(f"keytool {args[0]} failed: {' | '.join(out[-3:])}")
    csr.unlink(missing_ok=True)
    for f in (files.keystore, files.truststore, files.ca_store):
        os.chmod(f, 0o600)


def scram_arguments(creds: dict[str, str]) -> list[str]:
    """StorageTool `--add-scram` arguments: every principal's SCRAM-SHA-512 credential at format time."""
    out: list[str] = []
    for principal in PRINCIPALS:
        out += ["--add-scram", f"SCRAM-SHA-512=[name={principal},password={creds[principal]}]"]
    return out


# ---------------------------------------------------------------------- ACLs


@dataclass(frozen=True, slots=True, order=True)
class Grant:
    principal: str
    resource: str  # "topic" | "group" | "transactional_id"
    name: str
    pattern: str  # "literal" | "prefixed"
    operation: str  # "read" | "write" | "create" | "describe"


def acl_plan(catalog: TopicCatalog, *, features_group: str, predictions_group: str, jobs_app_id: str,
             topic_prefix: str) -> list[Grant]:
    """The ACLs of each service principal: what its processor reads and writes, nothing more."""
    grants: list[Grant] = []

    def topics(principal: str, operation: str, *logical: str) -> None:
        grants.extend(Grant(principal, "topic", catalog.name(n), "literal", operation) for n in logical)

    def add(principal: str, resource: str, name: str, pattern: str, operation: str) -> None:
        grants.append(Grant(principal, resource, name, pattern, operation))

    # Feature processor: ticks in; bars, features, dead letters, late ticks and its changelog out.
    topics("features", "read", "ticks", "features.changelog")
    topics("features", "write", "bars", "features", "ticks.dlq", "ticks.late", "features.changelog")
    add("features", "group", features_group, "literal", "read")
    add("features", "group", "streamquant-restore-", "prefixed", "read")
    add("features", "transactional_id", f"{features_group}-", "prefixed", "write")

    # Prediction processor and its Predict service: features, requests and the registry in; predictions,
    # replies and dead letters out.
    topics("predictions", "read", "features", "models", "ml.predict.requests", "predictions.changelog")
    topics("predictions", "write", "predictions", "features.dlq", "ml.predict.responses",
           "ml.predict.requests.dlq", "predictions.changelog")
    add("predictions", "group", predictions_group, "literal", "read")
    add("predictions", "group", f"{predictions_group}-predict", "literal", "read")
    add("predictions", "group", "streamquant-registry-", "prefixed", "read")
    add("predictions", "transactional_id", f"{predictions_group}-", "prefixed", "write")

    # Job plane (Faust): commands in; statuses, results and dead letters out, read back too (they share its
    # transactions); bars and features for jobs that read topics; the registry for promote/rollback; its
    # own event topic and Faust's internal topics (it creates them).
    topics("jobs", "read", "backtest.commands", "ml.commands", "bars", "features", "models", "jobs.status",
           "backtest.results", "ml.results", "backtest.commands.dlq", "ml.commands.dlq")
    topics("jobs", "write", "jobs.status", "backtest.results", "ml.results", "backtest.commands.dlq",
           "ml.commands.dlq", "models")
    for operation in ("read", "write", "create"):
        add("jobs", "topic", f"{topic_prefix}{jobs_app_id}-events", "literal", operation)
        add("jobs", "topic", f"{jobs_app_id}-", "prefixed", operation)
    add("jobs", "group", jobs_app_id, "literal", "read")
    for prefix in ("streamquant-bars-", "streamquant-registry-", "streamquant-tail-"):
        add("jobs", "group", prefix, "prefixed", "read")
    add("jobs", "transactional_id", f"{jobs_app_id}-", "prefixed", "write")

    # A user's client and the CLI: ticks and commands in, `models promote|rollback`; every output to read.
    topics("client", "write", "ticks", "backtest.commands", "ml.commands", "ml.predict.requests", "models")
    topics("client", "read", "bars", "features", "predictions", "jobs.status", "backtest.results", "ml.results",
           "models", "ml.predict.responses", "ticks.dlq", "ticks.late", "backtest.commands.dlq", "ml.commands.dlq")
    for prefix in ("streamquant-cli-", "streamquant-tail-", "streamquant-registry-"):
        add("client", "group", prefix, "prefixed", "read")
    return sorted(set(grants))


_RESOURCE = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
             "transactional_id": ResourceType.TRANSACTIONAL_ID}
_PATTERN = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}
_OPERATION = {"read": AclOperation.READ, "write": AclOperation.WRITE, "create": AclOperation.CREATE,
              "describe": AclOperation.DESCRIBE}


def apply_acls(admin: AdminClient, grants: list[Grant], timeout_s: float = 30.0) -> int:
    """Creates the bindings (creating an existing one is a no-op); returns how many were asked for."""
    bindings = [AclBinding(_RESOURCE[g.resource], g.name, _PATTERN[g.pattern], f"User:{g.principal}", "*",
                           _OPERATION[g.operation], AclPermissionType.ALLOW) for g in grants]
    for fut in admin.create_acls(bindings, request_timeout=timeout_s).values():
        fut.result()
    # The authorizer applies them from the metadata log, asynchronously: wait until it lists every one, so
    # a client started right after is not refused.
    deadline = time.monotonic() + timeout_s
    wanted = {_key(b) for b in bindings}
    none: Any = None  # the filter's "any name / principal / host" (typed as str in the stubs)
    everything = AclBindingFilter(ResourceType.ANY, none, ResourcePatternType.ANY, none, none, AclOperation.ANY,
                                  AclPermissionType.ANY)
    while True:
        listed = {_key(b) for b in admin.describe_acls(everything, request_timeout=timeout_s).result()}
        if wanted <= listed:
            return len(bindings)
        if time.monotonic() > deadline:
            raise SecureSetupError(f"{len(wanted - listed)} ACLs were created but not applied within {timeout_s:.0f}s")
        time.sleep(0.2)


def _key(b: AclBinding) -> tuple[object, ...]:
    return (b.restype, b.name, b.resource_pattern_type, b.principal, b.operation, b.permission_type)

"""The local development stack: a single-node KRaft Kafka broker from Maven Central's jars, and Redis.

`DevStack.up` is idempotent: jars are fetched once into a git-ignored cache, storage is formatted once,
and services that already answer are reused. Only processes this stack started (recorded in pid
files) are ever stopped.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streamquant.secure_stack import (
    SECURE_SERVER_PROPERTIES,
    SINGLE_NODE_FORMAT_ARGS,
    SINGLE_NODE_PROPERTIES,
    SecureFiles,
    SecureSetupError,
    client_config,
    ensure_certificates,
    ensure_credentials,
    scram_arguments,
    write_env_files,
)
from streamquant.settings import DevSettings, RedisSettings
from streams.config import KafkaConfig

KAFKA_VERSION = "4.4.0"
Progress = Callable[[str], None]


def java_major(version_output: str) -> int | None:
    """The major version in `java -version`'s output ('openjdk version "17.0.9"' -> 17, '"1.8.0_392"' -> 8)."""
    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not m:
        return None
    first = int(m.group(1))
    return int(m.group(2) or 0) if first == 1 else first


class DevStackError(Exception):
    """The local stack could not be set up, started or stopped."""


@dataclass(frozen=True, slots=True)
class ServiceState:
    name: str
    address: str
    answering: bool
    pid: int | None  # started (and owned) by this stack
    log: Path | None


SERVER_PROPERTIES = """\
# Written by `streamquant dev up`: single-node KRaft, broker and controller in one process.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{kafka_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{kafka_port},CONTROLLER://127.0.0.1:{controller_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
""" + SINGLE_NODE_PROPERTIES

LOG4J2_PROPERTIES = """\
# Written by `streamquant dev up`: broker logs to the console, which the stack sends to a file.
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
"""


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def new_cluster_id() -> str:
    """16 random bytes, url-safe base64 without padding (what `kafka-storage random-uuid` prints). Like
    Kafka's own generator, never one starting with "-", which a command line would read as an option."""
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class DevStack:
    """Starts, reports and stops the local broker and Redis."""

    def __init__(self, dev: DevSettings, redis_settings: RedisSettings, progress: Progress | None = None) -> None:
        self.dev = dev
        self.redis_settings = redis_settings
        self.home = dev.home.resolve()
        self.cache = dev.cache.resolve()
        self.libs = self.cache / f"kafka-{KAFKA_VERSION}" / "libs"
        self.kafka_dir = self.home / "kafka"
        self.data_dir = self.kafka_dir / "data"
        self.logs = self.home / "logs"
        self.run_dir = self.home / "run"
        self.progress = progress or (lambda _msg: None)

    @property
    def kafka_log(self) -> Path:
        return self.logs / "kafka.log"

    @property
    def redis_log(self) -> Path:
        return self.logs / "redis.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.dev.kafka_port}"

    # ------------------------------------------------------------------ up

    def up(self) -> list[ServiceState]:
        for d in (self.kafka_dir, self.logs, self.run_dir, self.home / "redis"):
            d.mkdir(parents=True, exist_ok=True)
        self._start_redis()
        self._start_kafka()
        deadline = time.monotonic() + self.dev.start_timeout_s
        self._wait_kafka(deadline)
        self._wait_redis(deadline)
        return self.status()

    def fetch_jars(self) -> Path:
        """Kafka's broker jars and a log4j2 binding, resolved by Maven into the cache (once)."""
        marker = self.libs / ".complete"
        if marker.exists():
            return self.libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise DevStackError("Maven (mvn) is not on PATH; install it (apt-get install maven) to fetch Kafka")
        self.progress(f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven into {self.libs} ...")
        self.libs.mkdir(parents=True, exist_ok=True)
        pom = resources.files("streamquant").joinpath("resources", "kafka-pom.xml")
        with resources.as_file(pom) as pom_path:
            cmd = [mvn, "-q", "-B", "-f", str(pom_path), f"-Dkafka.version={KAFKA_VERSION}",
                   "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={self.libs}"]
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
            raise DevStackError("Maven could not fetch Kafka's jars: " + " | ".join(tail))
        if not any(self.libs.glob("kafka_2.13-*.jar")):
            raise DevStackError(f"Maven finished but no kafka_2.13 jar is in {self.libs}")
        marker.write_text(KAFKA_VERSION + "\n")
        return self.libs

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
        if not java or not Path(java).exists():
            raise DevStackError("Java (17 or newer) is not on PATH; install a JDK to run the broker")
        shown = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
        major = java_major(shown.stderr + shown.stdout)
        if major is None or major < 17:
            found = f"Java {major}" if major is not None else "a Java whose version it does not say"
            raise DevStackError(f"Kafka 4 needs Java 17 or newer; {java} is {found} (set JAVA_HOME to a newer JDK)")
        return java

    def _start_kafka(self) -> None:
        self._start_broker("kafka", self.dev.kafka_port, self.kafka_dir,
                           SERVER_PROPERTIES.format(kafka_port=self.dev.kafka_port,
                                                    controller_port=self.dev.controller_port,
                                                    data_dir=self.data_dir), SINGLE_NODE_FORMAT_ARGS)

    def _start_broker(self, name: str, port: int, home: Path, properties: str, format_args: list[str],
                      hide: tuple[str, ...] = ()) -> None:
        pid = self._owned_pid(name)
        if pid is not None or port_open(port):
            self.progress(f"{name}: already running on 127.0.0.1:{port}" + (f" (pid {pid})" if pid else ""))
            return
        libs = self.fetch_jars()
        java = self._java()
        home.mkdir(parents=True, exist_ok=True)
        data_dir, log = home / "data", self.logs / f"{name}.log"
        props = home / "server.properties"
        fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold a password
        with os.fdopen(fd, "w") as f:
            f.write(properties)
        log4j = home / "log4j2.properties"
        log4j.write_text(LOG4J2_PROPERTIES)
        classpath = f"{libs}/*"
        log_opt = f"-Dlog4j2.configurationFile={log4j}"
        if not (data_dir / "meta.properties").exists():
            cluster_id = new_cluster_id()
            self.progress(f"{name}: formatting storage (cluster id {cluster_id})")
            fmt = subprocess.run(
                [java, "-cp", classpath, log_opt, "kafka.tools.StorageTool", "format", "--standalone",
                 f"--cluster-id={cluster_id}", "-c", str(props), *format_args],
                capture_output=True, text=True, check=False,
            )
            output = fmt.stdout + fmt.stderr
            for secret in hide:
                output = output.replace(secret, "***")
            with log.open("a") as f:
                f.write(output)
            if fmt.returncode != 0:
                raise DevStackError(f"formatting Kafka storage failed; see {log}")
        heap = self.dev.heap
        with log.open("a") as log_file:
            proc = subprocess.Popen(
                # Every collection's pause goes to <logs>/<name>-gc.log: a broker pause stalls every client.
                [java, f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC",
                 f"-Xlog:gc:file={self.logs / (name + '-gc.log')}:time,uptime:filecount=2,filesize=10m",
                 "-Djava.awt.headless=true", log_opt,
                 "-cp", classpath, "kafka.Kafka", str(props)],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self._write_pid(name, proc.pid)
        self.progress(f"{name}: started (pid {proc.pid}), log {log}")

    # ------------------------------------------------------------------ the secured broker

    @property
    def secure_files(self) -> SecureFiles:
        return SecureFiles(self.home / "secure")

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{self.dev.secure_kafka_port}"

    def secure_config(self, principal: str) -> KafkaConfig:
        files = self.secure_files
        return client_config(files, self.secure_bootstrap, principal, ensure_credentials(files))

    def up_secure(self) -> None:
        """The SASL_SSL broker (see `streamquant.secure_stack`), started and answering to `admin`."""
        files = self.secure_files
        creds = ensure_credentials(files)
        try:
            ensure_certificates(files, creds["_stores"])
        except SecureSetupError as err:
            raise DevStackError(str(err)) from None
        write_env_files(files, self.secure_bootstrap, creds)
        home = self.home / "kafka-secure"
        props = SECURE_SERVER_PROPERTIES.format(
            kafka_port=self.dev.secure_kafka_port, controller_port=self.dev.secure_controller_port,
            admin_password=creds["admin"], keystore=files.keystore, truststore=files.truststore,
            store_password=creds["_stores"], data_dir=home / "data")
        secret_args = scram_arguments(creds)
        self._start_broker("kafka-secure", self.dev.secure_kafka_port, home, props,
                           [*SINGLE_NODE_FORMAT_ARGS, *secret_args],
                           hide=tuple(creds.values()))
        self._wait_broker("kafka-secure", self.dev.secure_kafka_port, self.secure_config("admin").client_config(),
                          time.monotonic() + self.dev.start_timeout_s, announce=False)
        self.progress(f"kafka-secure: answering on {self.secure_bootstrap} (SASL_SSL, SCRAM-SHA-512); "
                      f"settings per principal in {files.root}/<principal>.env")

    def _start_redis(self) -> None:
        pid = self._owned_pid("redis")
        if pid is not None or self._redis_ping():
            self.progress(f"redis: already answering on 127.0.0.1:{self.dev.redis_port}"
                          + (f" (pid {pid})" if pid else ""))
            return
        server = shutil.which("redis-server")
        if server is None:
            raise DevStackError("redis-server is not on PATH; install it (apt-get install redis-server)")
        with self.redis_log.open("a") as log_file:
            proc = subprocess.Popen(
                [server, "--port", str(self.dev.redis_port), "--bind", "127.0.0.1", "--dir",
                 str(self.home / "redis"), "--save", "", "--appendonly", "no", "--daemonize", "no"],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self._write_pid("redis", proc.pid)
        self.progress(f"redis: started (pid {proc.pid}), log {self.redis_log}")

    def _wait_kafka(self, deadline: float) -> None:
        self._wait_broker("kafka", self.dev.kafka_port, {"bootstrap.servers": self.bootstrap}, deadline)

    def _wait_broker(self, name: str, port: int, client: dict[str, Any], deadline: float,
                     announce: bool = True) -> None:
        # Quiet: refused connections are expected while it starts.
        admin = AdminClient({**client, "socket.connection.setup.timeout.ms": 2000, "log_level": 2})
        log = self.logs / f"{name}.log"
        while True:
            if self._owned_pid(name) is None and not port_open(port):
                raise DevStackError(f"the {name} broker exited during start; see {log}")
            try:
                admin.list_topics(timeout=2)
                if announce:
                    self.progress(f"{name}: answering on 127.0.0.1:{port}")
                return
            except KafkaException:
                pass
            if time.monotonic() > deadline:
                raise DevStackError(f"the {name} broker did not answer on 127.0.0.1:{port} within "
                                    f"{self.dev.start_timeout_s:.0f}s; see {log}")
            time.sleep(0.5)

    def _wait_redis(self, deadline: float) -> None:
        while not self._redis_ping():
            if self._pid_file("redis").exists() and self._owned_pid("redis") is None:
                raise DevStackError(f"redis-server exited during start; see {self.redis_log}")
            if time.monotonic() > deadline:
                raise DevStackError(f"Redis did not answer on 127.0.0.1:{self.dev.redis_port} within "
                                    f"{self.dev.start_timeout_s:.0f}s; see {self.redis_log}")
            time.sleep(0.2)
        self.progress(f"redis: answering on 127.0.0.1:{self.dev.redis_port}")

    def _redis_ping(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.dev.redis_port, socket_connect_timeout=0.5,
                             socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False
        except redis.exceptions.ResponseError:
            return True  # answering, but wants AUTH: a Redis is there
        finally:
            client.close()

    # ------------------------------------------------------------------ down / status

    def down(self) -> list[str]:
        """Stops the processes this stack started (by pid file); leaves others alone."""
        stopped = []
        for name in ("kafka", "kafka-secure", "redis"):
            pid = self._owned_pid(name)
            if pid is None:
                self._pid_file(name).unlink(missing_ok=True)
                continue
            self.progress(f"{name}: stopping pid {pid}")
            _terminate(pid, timeout_s=60.0)
            self._pid_file(name).unlink(missing_ok=True)
            stopped.append(name)
        return stopped

    def status(self) -> list[ServiceState]:
        return [
            ServiceState("kafka", self.bootstrap, port_open(self.dev.kafka_port), self._owned_pid("kafka"),
                         self.kafka_log),
            ServiceState("redis", f"127.0.0.1:{self.dev.redis_port}", self._redis_ping(),
                         self._owned_pid("redis"), self.redis_log),
            *([ServiceState("kafka-secure", self.secure_bootstrap, port_open(self.dev.secure_kafka_port),
                            self._owned_pid("kafka-secure"), self.logs / "kafka-secure.log")]
              if self._pid_file("kafka-secure").exists() else []),
        ]

    # ------------------------------------------------------------------ pid files

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _write_pid(self, name: str, pid: int) -> None:
        self._pid_file(name).write_text(f"{pid}\n")

    def _owned_pid(self, name: str) -> int | None:
        """The pid in the pid file if that process is alive and is still ours (not a reused pid)."""
        path = self._pid_file(name)
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        marker = "kafka.Kafka" if name.startswith("kafka") else "redis-server"
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if marker not in cmdline or stat.split(")")[-1].split()[0] == "Z":
            return None
        return pid


def _terminate(pid: int, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"

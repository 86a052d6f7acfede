"""A real Prometheus (Debian's `prometheus` package) scrapes a feature processor on the local stack every second,
with our alert rules loaded: its HTTP API answers with the processor's series (ticks counted, dead letters,
lag per partition, the latency histogram, `up`), every rule evaluates without error, and every dashboard
query runs, the stream panels' with data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AdminClient

from streams.config import KafkaConfig
from streams.sink import KafkaSink

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/streamquant.rules.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/streamquant.json"
PARTITIONS = 2
TICKS = 4000
BAD = [b"{not json", b'{"symbol":"S001","ts":1767225600000,"price":-1,"size":1}']
JOB = "streamquant-features"
# Dashboard panels a running feature processor must fill.
PANELS_WITH_DATA = {"Throughput", "Tick → publish latency", "Consumer lag per partition", "Batch and commit time",
                    "Micro-batches", "Bars published", "Batches on GPU vs CPU", "Dead letters and late ticks"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, procs: dict[str, subprocess.Popen[str]]) -> Any:
    """Polls `check` until it returns something truthy; fails with what it waited for and the processes' output."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                output = proc.communicate()[0][-3000:]
                pytest.fail(f"{name} exited ({proc.returncode}) while waiting for {what}:\n{output}")
        last = check()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout_s:.0f}s (last answer: {last!r})")


class PrometheusApi:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:  # a bad query: the body says why
            return json.loads(err.read())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def stack(admin: AdminClient, kafka: KafkaConfig, unique: str) -> Iterator[tuple[str, dict[str, str]]]:
    prefix = f"prom-{unique}."
    env = {**os.environ, "STREAMQUANT_TOPICS_PREFIX": prefix, "STREAMQUANT_TOPICS_DATA_PARTITIONS": str(PARTITIONS),
           "STREAMQUANT_METRICS_PORT": str(free_port()), "STREAMQUANT_FEATURES_GROUP": f"prom-{unique}",
           "STREAMQUANT_FEATURES_ONLINE_STORE": "false", "STREAMQUANT_KAFKA_BOOTSTRAP": kafka.bootstrap}
    created = subprocess.run([sys.executable, "-m", "streamquant", "topics", "create"], env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    assert created.returncode == 0, created.stderr
    yield prefix, env
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    for fut in admin.delete_topics(names, operation_timeout=30).values():
        fut.result(timeout=30)


@pytest.fixture
def prometheus(stack: tuple[str, dict[str, str]],
               tmp_path: Path) -> Iterator[tuple[PrometheusApi, subprocess.Popen[str]]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus server is not installed: it comes with Debian's `prometheus` package "
                    "(apt-get install --no-install-recommends prometheus)")
    _prefix, env = stack
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB,
                            "static_configs": [{"targets": [f"127.0.0.1:{env['STREAMQUANT_METRICS_PORT']}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    api = PrometheusApi(port)
    try:
        wait_for("ready Prometheus", api.ready, 60, {"prometheus": proc})
        yield api, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_prometheus_scrapes_the_feature_processor(kafka: KafkaConfig, stack: tuple[str, dict[str, str]],
                                                  prometheus: tuple[PrometheusApi, subprocess.Popen[str]]) -> None:
    prefix, env = stack
    api, prom = prometheus
    processor = subprocess.Popen([sys.executable, "-m", "streamquant", "run", "features", "--stop-when-idle", "120"],
                                 env={**env, "STREAMQUANT_FEATURES_INSTANCE_ID": "prom"}, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    procs = {"prometheus": prom, "feature processor": processor}
    try:
        produced = subprocess.run([sys.executable, "-m", "streamquant", "produce", "ticks", "--count", str(TICKS),
                                   "--rate", "0", "--symbols", "20", "--seed", "5"],
                                  env=env, capture_output=True, text=True, timeout=120, check=False)
        assert produced.returncode == 0, produced.stdout + produced.stderr
        sink = KafkaSink(kafka)
        for bad in BAD:
            sink.write(f"{prefix}ticks", b"S001", bad)
        sink.flush()

        selector = f'{{job="{JOB}"}}'
        wait_for("target up", lambda: api.value(f"up{selector}") == 1.0, 60, procs)
        wait_for("every tick counted", lambda: api.value(f"sum(streamquant_ticks_in_total{selector})")
                 == TICKS + len(BAD), 120, procs)
        assert api.value(f'sum(streamquant_messages_consumed_total{{job="{JOB}", topic="{prefix}ticks"}})') \
            == TICKS + len(BAD)
        wait_for("dead letters counted", lambda: api.value(
            f'sum(streamquant_dead_letters_total{{job="{JOB}", topic="{prefix}ticks"}})') == len(BAD), 30, procs)
        lags = wait_for("lag of each partition", lambda: len(
            api.query(f'streamquant_consumer_lag{{job="{JOB}", processor="features"}}')) == PARTITIONS and
            api.query(f'streamquant_consumer_lag{{job="{JOB}", processor="features"}}'), 60, procs)
        assert {s["metric"]["partition"] for s in lags} == {str(p) for p in range(PARTITIONS)}
        assert all(float(s["value"][1]) <= 1 for s in lags), lags  # caught up (a transaction marker at most)
        assert api.value(f'sum(streamquant_tick_to_publish_seconds_count{{job="{JOB}", processor="features"}})')
        assert api.value(f'streamquant_active_backend{{job="{JOB}", processor="features", backend="cpu"}}') == 1.0

        # The rules evaluate against real series without an error.
        def evaluated() -> list[dict[str, Any]] | None:
            groups = api.get("/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            # an unevaluated rule's lastEvaluation is Go's zero time
            return rules if rules and not any(r["lastEvaluation"].startswith("0001") for r in rules) else None
        rules = wait_for("a first evaluation of every rule", evaluated, 30, procs)
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
        assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])

        # Every dashboard query runs; the stream panels have data (a rate needs two scrapes within its window).
        time.sleep(3)
        board = json.loads(DASHBOARD.read_text())
        empty = []
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "1m")
                answer = api.get("/api/v1/query", query=expr)
                assert answer["status"] == "success", (panel["title"], expr, answer)
                if panel["title"] in PANELS_WITH_DATA and target["refId"] == "A" and not answer["data"]["result"]:
                    empty.append(panel["title"])
        assert not empty, f"dashboard panels without data: {empty}"
    finally:
        processor.send_signal(signal.SIGTERM)
        try:
            processor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            processor.kill()
            processor.wait()

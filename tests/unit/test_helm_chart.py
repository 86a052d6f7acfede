"""The Helm chart, checked without a cluster: .ci/helm-check (helm lint, helm template with the default, GPU and
CI values, kubeconform against Kubernetes and CRD schemas offline), then what the rendered objects mean: the
settings they pass are real settings with the intended values, each processor runs an existing command,
replicas never exceed partitions, autoscaling is KEDA on lag or a CPU HPA, GPU values ask for GPUs, secrets stay
out of the ConfigMap, and the PrometheusRule carries the rules file.

The first run builds helm and kubeconform with `go install` and fetches the schemas into .cache/tools (a few
minutes); later runs reuse them and take seconds.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from streamquant.settings import ENV_PREFIX, load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "streamquant"
CHECK = ROOT / ".ci" / "helm-check"
TOOLS = Path(os.environ.get("STREAMQUANT_TOOLS", ROOT / ".cache" / "tools"))
HELM = TOOLS / "bin" / "helm"
PROCESSORS = ("features", "predictions", "jobs")
FULL = "ci/keda-sasl-tls-values.yaml"
HPA = "ci/hpa-values.yaml"

# Building the tools on a machine that has never run the check takes longer than pytest's default limit.
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="session")
def helm_check() -> str:
    """Runs .ci/helm-check once (installing its tools on first use); its output, which must be a pass."""
    if not shutil.which("go") and not Path("/usr/local/go/bin/go").exists() and not HELM.exists():
        pytest.fail("the Helm chart checks need `go` (1.26+) once, to build helm and kubeconform into "
                    f"{TOOLS / 'bin'}; install Go or run .ci/helm-check where it is")
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run([str(CHECK)], cwd=ROOT, env=env, text=True, capture_output=True, timeout=1100)
    out = run.stdout + run.stderr
    assert run.returncode == 0, f".ci/helm-check failed (exit {run.returncode}):\n{out[-6000:]}"
    return out


def render(*values: str, sets: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    args = [str(HELM), "template", "sq", str(CHART), "--namespace", "trading"]
    for v in values:
        args += ["-f", str(CHART / v)]
    for k, v in (sets or {}).items():
        args += ["--set", f"{k}={v}"]
    run = subprocess.run(args, text=True, capture_output=True, timeout=60)
    if check:
        assert run.returncode == 0, run.stderr
    return run


def objects(*values: str, sets: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render(*values, sets=sets).stdout) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def deployment(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return of_kind(docs, "Deployment")[f"sq-streamquant-{name}"]


def chart_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The variables a processor's pod gets: the ConfigMap, and the chart's Secret where there is one."""
    env = dict(of_kind(docs, "ConfigMap")["sq-streamquant-settings"]["data"])
    for secret in of_kind(docs, "Secret").values():
        if secret["metadata"].get("annotations", {}).get("helm.sh/hook"):
            continue
        env.update({k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
    return env


def refused(*values: str, sets: dict[str, str]) -> str:
    run = render(*values, sets=sets, check=False)
    assert run.returncode != 0, f"rendered although it should not: {sets}"
    return run.stderr


# ---------------------------------------------------------------------- the check script


def test_the_chart_lints_renders_and_validates_offline(helm_check: str) -> None:
    assert "helm-check: chart lints, renders and validates" in helm_check
    summaries = [line for line in helm_check.splitlines() if line.startswith("Summary:")]
    assert len(summaries) == 2, helm_check  # the oldest and the newest Kubernetes the chart supports
    for line in summaries:
        assert "Invalid: 0, Errors: 0, Skipped: 0" in line, line


def test_the_validator_rejects_a_wrong_manifest(helm_check: str, tmp_path: Path) -> None:
    """The schemas on disk are really used: a misspelt field in a Deployment and in a ScaledObject fails."""
    rendered = render(FULL).stdout
    bad = rendered.replace("imagePullPolicy:", "imagePullPolicyy:").replace("  pollingInterval:", "  pollingIntervall:")
    (tmp_path / "bad.yaml").write_text(bad)
    schemas = str(next((TOOLS / "schemas").glob("k8s-*")))
    kubernetes = schemas + "/kubernetes/{{ .NormalizedKubernetesVersion }}{{ .StrictSuffix }}/" \
                           "{{ .ResourceKind }}{{ .KindSuffix }}.json"
    crds = schemas + "/crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
    run = subprocess.run(
        [str(TOOLS / "bin" / "kubeconform"), "-strict", "-summary", "-kubernetes-version", "1.37.0",
         "-schema-location", kubernetes, "-schema-location", crds, str(tmp_path / "bad.yaml")],
        text=True, capture_output=True, timeout=60)
    assert run.returncode != 0
    assert "'imagePullPolicyy' not allowed" in run.stdout
    assert "'pollingIntervall' not allowed" in run.stdout


# ---------------------------------------------------------------------- settings and commands


def test_the_configmap_holds_real_settings_with_the_intended_values(helm_check: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in chart_env(objects(FULL)).items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.kafka.bootstrap == "kafka-0.kafka:9093,kafka-1.kafka:9093"
    assert (s.kafka.security_protocol, s.kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert s.kafka.sasl_username == "features"
    assert s.kafka.sasl_password is not None and s.kafka.sasl_password.get_secret_value() == "not-a-real-password"
    assert s.kafka.ssl_ca_location == "/etc/streamquant/kafka-tls/ca.crt"
    assert s.kafka.ssl_key_location == "/etc/streamquant/kafka-tls/tls.key"
    assert s.kafka.options == {"socket.keepalive.enable": "true"}
    assert s.redis.password is not None and s.redis.password.get_secret_value() == "not-a-real-redis-password"
    assert (s.topics.prefix, s.topics.data_partitions, s.topics.retention_hours) == ("prod.", 12, 72.0)
    assert s.ingest.max_batch == 1_000_000  # not 1e+06: Helm reads numbers as floats
    assert s.features.intervals == ("1s", "1m", "5m")
    assert s.predictions.long_threshold == 0.6
    assert (s.jobs.web_host, s.jobs.web_port, s.metrics.port) == ("0.0.0.0", 6066, 9464)
    assert s.jobs.artifact_root == "/var/lib/streamquant/artifacts"


def test_secrets_and_shared_instance_ids_stay_out_of_the_configmap(helm_check: str) -> None:
    docs = objects(FULL)
    configmap = json.dumps(of_kind(docs, "ConfigMap"))
    assert "not-a-real" not in configmap and "PASSWORD" not in configmap
    for setting in ("config.kafka.sasl_password", "config.kafka.ssl_key_password", "config.redis.password"):
        assert "not allowed" in refused(sets={setting: "hunter2"})
    assert "not allowed" in refused(sets={"config.features.instance_id": "one"})
    assert "not allowed" in refused(sets={"config.dev.heap": "2g"})
    assert "not allowed" in refused(sets={"config.features.lateness": "5"})  # misspelt
    assert "minimum" in refused(sets={"config.topics.data_partitions": "0"})


def test_each_processor_runs_its_command_with_the_chart_settings(helm_check: str) -> None:
    """The commands exist, and the entry point loads the settings the chart gives (`--help` after loading)."""
    docs = objects(FULL)
    commands = {name: deployment(docs, name)["spec"]["template"]["spec"]["containers"][0]["command"]
                for name in PROCESSORS}
    assert commands == {name: ["streamquant", "run", name] for name in PROCESSORS}
    job = of_kind(docs, "Job")["sq-streamquant-topics"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["streamquant", "topics", "create"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env = {**base, **chart_env(docs)}
    runs = {" ".join(c): subprocess.Popen([sys.executable, "-m", "streamquant", *c[1:], "--help"], cwd=ROOT, env=env,
                                          text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for c in [*commands.values(), ["streamquant", "topics", "create"]]}
    for command, run in runs.items():
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0 and "Usage:" in out, f"{command}:\n{out}"


def test_the_topics_hook_gets_the_same_settings_before_the_configmap_exists(helm_check: str) -> None:
    docs = objects(FULL)
    job = of_kind(docs, "Job")["sq-streamquant-topics"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    inline = {e["name"]: e["value"] for e in container["env"] if "value" in e and e["name"].startswith(ENV_PREFIX)}
    assert inline == of_kind(docs, "ConfigMap")["sq-streamquant-settings"]["data"]
    hook_secret = of_kind(docs, "Secret")["sq-streamquant-topics-credentials"]
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"] == "-10"  # before the Job (weight 0)
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert refs == {"sq-streamquant-topics-credentials"}


# ---------------------------------------------------------------------- replicas and autoscaling


def test_replicas_never_exceed_the_partitions(helm_check: str) -> None:
    assert "features.replicas is 9 but config.topics.data_partitions is 8" in refused(sets={"features.replicas": "9"})
    assert "jobs.replicas is 4 but config.topics.command_partitions is 3" in refused(sets={"jobs.replicas": "4"})
    assert "maxReplicas is 16" in refused(sets={"predictions.autoscaling.enabled": "true",
                                               "predictions.autoscaling.maxReplicas": "16"})
    docs = objects(sets={"config.topics.data_partitions": "16", "features.replicas": "16"})
    assert deployment(docs, "features")["spec"]["replicas"] == 16


def test_default_values_scale_by_replicas_only(helm_check: str) -> None:
    docs = objects()
    assert not of_kind(docs, "ScaledObject") and not of_kind(docs, "HorizontalPodAutoscaler")
    assert {n: deployment(docs, n)["spec"]["replicas"] for n in PROCESSORS} == {"features": 2, "predictions": 2,
                                                                              "jobs": 1}
    assert set(of_kind(docs, "PodDisruptionBudget")) == {f"sq-streamquant-{n}" for n in PROCESSORS}


def test_keda_scales_each_processor_on_its_consumer_group_lag(helm_check: str) -> None:
    docs = objects(FULL)
    scaled = of_kind(docs, "ScaledObject")
    assert set(scaled) == {f"sq-streamquant-{n}" for n in PROCESSORS}
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    expected = {"features": [("streamquant-features", "prod.ticks", "50000")],
                "predictions": [("streamquant-predictions", "prod.features", "20000")],
                "jobs": [("streamquant-jobs", "prod.backtest.commands", "5"),
                         ("streamquant-jobs", "prod.ml.commands", "5")]}
    for name, triggers in expected.items():
        spec = scaled[f"sq-streamquant-{name}"]["spec"]
        kafka = [t for t in spec["triggers"] if t["type"] == "kafka"]
        assert [(t["metadata"]["consumerGroup"], t["metadata"]["topic"], t["metadata"]["lagThreshold"])
                for t in kafka] == triggers
        for t in kafka:
            assert t["metadata"]["bootstrapServers"] == "kafka-0.kafka:9093,kafka-1.kafka:9093"
            assert (t["metadata"]["sasl"], t["metadata"]["tls"]) == ("scram_sha512", "enable")
            assert t["authenticationRef"]["name"] == "sq-streamquant-kafka"
        assert spec["scaleTargetRef"]["name"] == f"sq-streamquant-{name}"
        assert "replicas" not in deployment(docs, name)["spec"]  # the autoscaler owns it
    assert scaled["sq-streamquant-features"]["spec"]["maxReplicaCount"] == 12  # = data_partitions
    assert [t["type"] for t in scaled["sq-streamquant-predictions"]["spec"]["triggers"]] == ["kafka", "prometheus"]
    auth = of_kind(docs, "TriggerAuthentication")["sq-streamquant-kafka"]["spec"]["secretTargetRef"]
    assert {(a["parameter"], a["key"]) for a in auth} == {
        ("username", "STREAMQUANT_KAFKA_SASL_USERNAME"), ("password", "STREAMQUANT_KAFKA_SASL_PASSWORD"),
        ("ca", "ca.crt"), ("cert", "tls.crt"), ("key", "tls.key"),
        ("keyPassword", "STREAMQUANT_KAFKA_SSL_KEY_PASSWORD")}


def test_without_keda_a_cpu_hpa_scales_instead(helm_check: str) -> None:
    docs = objects(HPA)
    assert not of_kind(docs, "ScaledObject") and not of_kind(docs, "TriggerAuthentication")
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {"sq-streamquant-features", "sq-streamquant-predictions"}  # jobs is disabled there
    spec = hpas["sq-streamquant-predictions"]["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 4)
    assert spec["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]
    assert "only KEDA scales to zero" in refused(HPA, sets={"features.autoscaling.minReplicas": "0"})
    assert "resources.requests.cpu" in refused(HPA, sets={"features.resources.requests.cpu": "null"})


# ---------------------------------------------------------------------- GPU, ports, monitoring


def test_gpu_values_ask_for_a_gpu_on_gpu_nodes(helm_check: str) -> None:
    docs = objects("values-gpu.yaml")
    for name in PROCESSORS:
        pod = deployment(docs, name)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["image"].endswith("-gpu")
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert deployment(docs, name)["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    cpu = objects()
    assert all("nvidia.com/gpu" not in json.dumps(deployment(cpu, n)) for n in PROCESSORS)


def test_probes_and_services_use_the_metrics_port(helm_check: str) -> None:
    docs = objects(sets={"config.metrics.port": "9500"})
    assert of_kind(docs, "ConfigMap")["sq-streamquant-settings"]["data"]["STREAMQUANT_METRICS_PORT"] == "9500"
    services = of_kind(docs, "Service")
    for name in PROCESSORS:
        container = deployment(docs, name)["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == 9500
        assert container["startupProbe"]["tcpSocket"]["port"] == "metrics"
        assert container["livenessProbe"]["tcpSocket"]["port"] == "metrics"
        assert container["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
        service = services[f"sq-streamquant-{name}"]
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == (
            {"metrics": 9500, "http": 6066} if name == "jobs" else {"metrics": 9500})
        assert service["metadata"]["labels"]["streamquant.io/job"] == f"streamquant-{name}"
    assert "metrics port" in refused(sets={"config.metrics.port": "0"})


def test_servicemonitor_and_prometheusrule(helm_check: str) -> None:
    assert not of_kind(objects(), "ServiceMonitor") and not of_kind(objects(), "PrometheusRule")
    docs = objects(FULL)
    monitor = of_kind(docs, "ServiceMonitor")["sq-streamquant"]
    assert monitor["spec"]["jobLabel"] == "streamquant.io/job"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rule = of_kind(docs, "PrometheusRule")["sq-streamquant"]
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "streamquant.rules.yml").read_text())
    assert rule["spec"]["groups"]


# ---------------------------------------------------------------------- values schema


def _helm_schemas() -> ModuleType:
    spec = importlib.util.spec_from_file_location("helm_schemas", ROOT / ".ci" / "helm_schemas.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_values_schema_matches_the_settings() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["config"] == _helm_schemas().config_schema(), (
        "helm/streamquant/values.schema.json is behind streamquant/settings.py: "
        "run `.venv/bin/python .ci/helm_schemas.py values-schema`")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for section, fields in values["config"].items():
        allowed = schema["properties"]["config"]["properties"][section]["properties"]
        assert set(fields or {}) <= set(allowed), section


def test_the_chart_defaults_to_the_image_of_this_release() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"], "bump Chart.yaml's appVersion (and version) with the release"

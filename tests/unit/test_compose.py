"""docker-compose.yml and the Dockerfile, checked without a container engine (CI has none): the compose file
against the Compose Specification's JSON schema, every STREAMQUANT_* variable it sets against the settings, every
command it runs against the CLI, the wiring between its services, and the Dockerfile's stages, build context and
lock files."""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import typer
import typer.core
import yaml
from packaging.requirements import Requirement

from streamquant.cli import app
from streamquant.settings import ENV_PREFIX, SECTIONS, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SPEC_DIR = ROOT / "tests" / "data" / "compose-spec"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"

COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OUR_IMAGE = "streamquant:cpu"
# Services that run our image, and among them the long-running processors (`streamquant run ...`).
OURS = sorted(name for name, svc in SERVICES.items() if svc.get("image") == OUR_IMAGE)
PROCESSORS = sorted(name for name in OURS if SERVICES[name]["command"][0] == "run")
# Written by the observability work; this file only provisions them.
DASHBOARD = GRAFANA_DIR / "dashboards" / "streamquant.json"
RULES = PROMETHEUS_DIR / "rules" / "streamquant.rules.yml"


@pytest.fixture(autouse=True)
def _no_streamquant_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {name: value for name, value in env.items()}


def streamquant_env(name: str) -> dict[str, str]:
    return {k: v for k, v in environment(SERVICES[name]).items() if k.startswith(ENV_PREFIX)}


def metrics_port(name: str) -> int:
    return int(streamquant_env(name).get("STREAMQUANT_METRICS_PORT", Settings.model_fields["metrics"].default.port))


# ---------------------------------------------------------------------- the Compose Specification


def _spec() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SPEC_DIR / "compose-spec.json").read_text())
    return schema


def _spec_errors(document: dict[str, Any]) -> list[str]:
    schema = _spec()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]


def test_the_vendored_schema_is_the_one_its_readme_names() -> None:
    recorded = re.search(r"^sha256: ([0-9a-f]{64})$", (SPEC_DIR / "README.md").read_text(), re.M)
    assert recorded, "tests/data/compose-spec/README.md must record the schema's sha256"
    assert hashlib.sha256((SPEC_DIR / "compose-spec.json").read_bytes()).hexdigest() == recorded.group(1)
    assert (SPEC_DIR / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_compose_file_follows_the_compose_specification() -> None:
    schema = _spec()
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert _spec_errors(COMPOSE) == []


@pytest.mark.parametrize("mistake", [
    pytest.param(lambda d: d["services"]["features"].update(imagee="x"), id="unknown service key"),
    pytest.param(lambda d: d["services"]["features"]["depends_on"]["kafka"].update(condition="when_ready"),
                 id="unknown depends_on condition"),
    pytest.param(lambda d: d["services"]["jobs"].update(ports="6066:6066"), id="ports not a list"),
    pytest.param(lambda d: d.update(volume={}), id="unknown top-level key"),
])
def test_the_schema_check_catches_mistakes(mistake: Any) -> None:
    document = copy.deepcopy(COMPOSE)
    mistake(document)
    assert _spec_errors(document)


# ---------------------------------------------------------------------- settings and commands


def test_the_stack_runs_every_processor_and_the_one_shots() -> None:
    assert PROCESSORS == ["features", "jobs", "predictions"]
    assert set(OURS) == {*PROCESSORS, "topics", "producer"}
    assert SERVICES["producer"]["profiles"] == ["producer"]
    for name in OURS:
        service = SERVICES[name]
        assert service["build"] == {"context": ".", "target": "cpu"}, name
        assert "entrypoint" not in service, f"{name}: the image's entry point is `streamquant`"
        assert all(isinstance(arg, str) for arg in service["command"]), name


@pytest.mark.parametrize("name", OURS)
def test_every_streamquant_variable_is_a_real_setting(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = streamquant_env(name)
    assert env, f"{name} sets no STREAMQUANT_* variable"
    for var, value in env.items():
        assert isinstance(value, str) and "$" not in value, f"{name}: {var} must be a literal string"
        section, _, field = var[len(ENV_PREFIX):].lower().partition("_")
        assert section in SECTIONS, f"{name}: {var} names no settings section"
        model = Settings.model_fields[section].annotation
        assert isinstance(model, type) and field in model.model_fields, f"{name}: {var} is no field of {section}"
        monkeypatch.setenv(var, value)
    settings = load_settings()
    for var, value in env.items():
        section, _, field = var[len(ENV_PREFIX):].lower().partition("_")
        loaded = getattr(getattr(settings, section), field)
        if isinstance(loaded, str | int | float):
            assert str(loaded) == value, f"{name}: {var}"


@pytest.mark.parametrize("var", ["STREAMQUANT_KAFKA_BOOTSTRAPP", "STREAMQUANT_FEATURE_GROUP",
                                 "STREAMQUANT_METRICS_PORTS", "STREAMQUANT_METRICS_PORT"])
def test_a_misspelt_or_invalid_variable_is_refused(var: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(var, "not-a-port" if var == "STREAMQUANT_METRICS_PORT" else "x")
    with pytest.raises(SettingsError):
        load_settings()


def _parse(args: list[str]) -> None:
    """Parse a command line the way `streamquant` would, values included, without running it."""
    command = typer.main.get_command(app)  # typer's own copy of click: no `import click` here
    path, rest = ["streamquant"], list(args)
    while isinstance(command, typer.core.TyperGroup):
        assert rest, f"`{' '.join(path)}` needs a subcommand"
        sub = command.get_command(typer.Context(command), rest[0])
        assert sub is not None, f"`{' '.join(path)}` has no command {rest[0]!r}"
        path.append(rest.pop(0))
        command = sub
    command.make_context(" ".join(path), rest)


@pytest.mark.parametrize("name", OURS)
def test_every_command_parses(name: str) -> None:
    _parse(SERVICES[name]["command"])


def test_the_command_check_catches_mistakes() -> None:
    with pytest.raises(AssertionError, match="no command"):
        _parse(["run", "feature"])
    with pytest.raises(typer.TyperException, match="No such option"):
        _parse(["produce", "ticks", "--symbolz", "3"])
    with pytest.raises(typer.BadParameter):
        _parse(["produce", "ticks", "--rate", "-5"])


def test_every_command_exists_in_the_installed_cli() -> None:
    """`python -m streamquant <command> --help` with each service's variables: the entry point loads the settings
    and finds the command."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    runs = {name: subprocess.Popen([sys.executable, "-m", "streamquant", *SERVICES[name]["command"], "--help"],
                                   cwd=ROOT, env={**base, **streamquant_env(name)}, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for name in OURS}
    for name, run in runs.items():
        out, _ = run.communicate(timeout=60)
        assert run.returncode == 0, f"{name}: {SERVICES[name]['command']}\n{out}"
        assert "Usage:" in out, name


# ---------------------------------------------------------------------- wiring between the services


def test_processors_reach_kafka_and_redis_inside_the_network() -> None:
    kafka = environment(SERVICES["kafka"])
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listening = dict(item.split("://") for item in kafka["KAFKA_LISTENERS"].split(","))
    for name in OURS:
        env = streamquant_env(name)
        bootstrap = env["STREAMQUANT_KAFKA_BOOTSTRAP"]
        listener = next((n for n, address in advertised.items() if address == bootstrap), None)
        assert listener, f"{name}: {bootstrap} is not an address the broker advertises ({advertised})"
        assert bootstrap.split(":")[0] == "kafka"
        assert listening[listener].rsplit(":", 1)[1] == bootstrap.rsplit(":", 1)[1]
        redis = urlsplit(env["STREAMQUANT_REDIS_URL"])
        assert (redis.hostname, redis.port) == ("redis", 6379), name
    # clients on the host use the same address as the local stack's broker
    assert "127.0.0.1:9092" in advertised.values()
    assert "127.0.0.1:9092:9092" in SERVICES["kafka"]["ports"]


def test_processors_wait_for_their_dependencies() -> None:
    for name in PROCESSORS:
        assert SERVICES[name]["depends_on"] == {
            "kafka": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "topics": {"condition": "service_completed_successfully"},
        }, name
        assert SERVICES[name]["restart"] == "unless-stopped"
    for name in ("topics", "producer"):
        assert SERVICES[name]["restart"] == "no"


def test_jobs_and_predictions_share_the_artifacts_at_the_artifact_root() -> None:
    # The registry names a model's artifact by the path the job plane wrote it to.
    root = streamquant_env("jobs")["STREAMQUANT_JOBS_ARTIFACT_ROOT"]
    for name in ("jobs", "predictions"):
        assert f"artifacts:{root}" in SERVICES[name]["volumes"], name
        assert streamquant_env(name)["STREAMQUANT_JOBS_ARTIFACT_ROOT"] == root


def test_the_job_plane_http_views_answer_outside_its_container() -> None:
    env = streamquant_env("jobs")
    assert env["STREAMQUANT_JOBS_WEB_HOST"] == "0.0.0.0"
    port = env["STREAMQUANT_JOBS_WEB_PORT"]
    assert f"127.0.0.1:{port}:{port}" in SERVICES["jobs"]["ports"]


def test_named_volumes_are_declared_and_bind_mounts_exist() -> None:
    declared = set(COMPOSE["volumes"])
    provided_elsewhere = {"./deploy/grafana/dashboards"}  # see test_observability_files_are_where_they_are_mounted
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert source in provided_elsewhere or (ROOT / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def _prometheus_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    return config


def test_prometheus_scrapes_every_processor_on_its_metrics_port() -> None:
    jobs = {job["job_name"]: job for job in _prometheus_config()["scrape_configs"]}
    for name in PROCESSORS:
        job = jobs.get(f"streamquant-{name}")
        assert job, f"no scrape job streamquant-{name}"
        # DNS discovery: Docker answers a service's name with every replica's address
        assert job["dns_sd_configs"] == [{"names": [name], "type": "A", "port": metrics_port(name),
                                          "refresh_interval": "10s"}]
        assert f":{metrics_port(name)}/metrics" in " ".join(SERVICES[name]["healthcheck"]["test"])
    scraped = {n for job in jobs.values() for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert scraped == set(PROCESSORS)


def test_prometheus_loads_this_config_and_the_alert_rules() -> None:
    service = SERVICES["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in service["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
    assert _prometheus_config()["rule_files"] == [str(RULES.relative_to(PROMETHEUS_DIR))]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboards_folder() -> None:
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in SERVICES["grafana"]["volumes"] if v.startswith("./"))
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert mounts["./deploy/grafana/provisioning/datasources"] == "/etc/grafana/provisioning/datasources"
    assert [(d["uid"], d["type"], d["url"], d["isDefault"]) for d in datasources] == [
        ("prometheus", "prometheus", "http://prometheus:9090", True)]
    assert "127.0.0.1:9090:9090" in SERVICES["prometheus"]["ports"]
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/streamquant.yml").read_text())["providers"]
    assert mounts["./deploy/grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    assert [p["options"]["path"] for p in providers] == [mounts["./deploy/grafana/dashboards"]]


@pytest.mark.parametrize("path", [DASHBOARD, RULES], ids=lambda p: p.name)
def test_observability_files_are_where_they_are_mounted(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} is not written yet (observability work)")
    if path.suffix == ".json":
        json.loads(path.read_text())
    else:
        assert yaml.safe_load(path.read_text())["groups"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) is not installed")
def test_promtool_accepts_the_prometheus_config() -> None:
    args = ["promtool", "check", "config"] + ([] if RULES.exists() else ["--syntax-only"])
    done = subprocess.run([*args, str(PROMETHEUS_DIR / "prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------- the Dockerfile


def _instructions(text: str) -> list[tuple[str, str]]:
    found, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        found.append((keyword.upper(), rest.strip()))
        pending = ""
    return found


def _stages() -> list[dict[str, Any]]:
    """Each stage's name, resolved base image and instructions (ARG defaults before the first FROM expand)."""
    args: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for keyword, rest in _instructions(DOCKERFILE.read_text()):
        if keyword == "ARG" and not stages:
            arg, _, default = rest.partition("=")
            args[arg] = default
        elif keyword == "FROM":
            parts = re.split(r"\s+as\s+", rest, flags=re.I)
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            stages.append({"name": parts[1] if len(parts) > 1 else None, "base": base, "steps": []})
        else:
            stages[-1]["steps"].append((keyword, rest))
    return stages


STAGES = {stage["name"]: stage for stage in _stages()}


def _last(stage: str, keyword: str) -> str:
    return [rest for k, rest in STAGES[stage]["steps"] if k == keyword][-1]


def _copies(stage: str) -> list[tuple[str | None, list[str]]]:
    """(the --from stage or None for the build context, the sources) of each COPY."""
    copies = []
    for keyword, rest in STAGES[stage]["steps"]:
        if keyword in ("COPY", "ADD"):
            words = shlex.split(rest)
            source_from = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            paths = [w for w in words if not w.startswith("--")]
            copies.append((source_from, paths[:-1]))
    return copies


def test_dockerfile_has_the_documented_targets() -> None:
    names = [stage["name"] for stage in _stages()]
    assert {"cpu", "gpu"} <= set(names)
    assert names[-1] == "cpu", "`docker build .` (no --target) must give the CPU image"
    assert STAGES["cpu"]["base"].startswith("python:3.11-slim")
    assert STAGES["build"]["base"] == STAGES["cpu"]["base"], "the venv is built on the image it runs on"
    assert re.match(r"(nvidia/cuda:12\.[\d.]+-(base|runtime)-|rapidsai/)", STAGES["gpu"]["base"])
    compose_targets = {SERVICES[name]["build"]["target"] for name in OURS}
    assert compose_targets <= set(names)


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_images_run_streamquant_as_an_unprivileged_user(target: str) -> None:
    assert json.loads(_last(target, "ENTRYPOINT")) == ["streamquant"]
    user = _last(target, "USER").split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root uid (Kubernetes' runAsNonRoot can check it)"


def test_dependencies_come_from_the_lock_files() -> None:
    build = " ".join(rest for k, rest in STAGES["build"]["steps"] if k == "RUN")
    assert "--constraint requirements.lock" in build and "locks.py check requirements.lock" in build
    assert "pip install --no-deps ." in build
    gpu = " ".join(rest for k, rest in STAGES["gpu"]["steps"] if k == "RUN")
    assert "uv pip sync requirements-gpu.lock" in gpu and "locks.py check requirements-gpu.lock" in gpu
    assert "uv pip install --no-deps ." in gpu


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip("/"))
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        patterns.append((negate, re.compile(regex)))
    return patterns


def _in_context(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    parts = path.split("/")
    excluded = False
    for negate, regex in patterns:
        if any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return not excluded


def test_every_copied_file_is_in_the_build_context() -> None:
    patterns = _dockerignore()
    stage_names = [stage["name"] for stage in _stages()]
    for stage in ("build", "gpu"):
        for source_from, sources in _copies(stage):
            if source_from is not None:
                assert source_from in stage_names[:stage_names.index(stage)], f"{stage}: COPY --from={source_from}"
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"{stage}: COPY {source}: no such file"
                files = [source] if (ROOT / source).is_file() else [
                    str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py") if "__pycache__" not in p.parts]
                assert files, source
                for file in files:
                    assert _in_context(file, patterns), f"{stage}: {file} is left out by .dockerignore"
    for junk in (".venv/bin/python", ".git/HEAD", "artifacts/x", "tests/unit/test_compose.py",
                 "streamquant/__pycache__/cli.cpython-311.pyc", "streamquant-jobs-data/x"):
        assert not _in_context(junk, patterns), f"{junk} would be sent to the builder"


def test_both_images_install_every_package_of_the_project() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()
                and any(fnmatch.fnmatch(p.name, pattern) for pattern in includes)}
    assert packages
    needed = packages | {"pyproject.toml", config["project"]["readme"]}
    for stage in ("build", "gpu"):
        copied = {source for source_from, sources in _copies(stage) if source_from is None for source in sources}
        assert needed <= copied, f"{stage} does not copy {sorted(needed - copied)}"


# ---------------------------------------------------------------------- lock files


def _locks_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("streamquant_image_locks", ROOT / "deploy/docker/locks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("lock_file", "extras"), [("requirements.lock", []), ("requirements-gpu.lock", ["gpu"])])
def test_each_lock_pins_every_runtime_requirement(lock_file: str, extras: list[str]) -> None:
    locks = _locks_module()
    pins = locks.read_lock(ROOT / lock_file)
    for line in locks.runtime_requirements(ROOT / "pyproject.toml", extras):
        requirement = Requirement(line)
        pinned = pins.get(locks.normalize(requirement.name))
        assert pinned, f"{lock_file} does not pin {requirement.name}"
        assert requirement.specifier.contains(pinned, prereleases=True), f"{lock_file}: {requirement.name}=={pinned}"


def test_the_gpu_lock_follows_the_cpu_lock() -> None:
    """requirements-gpu.lock differs from requirements.lock only where the RAPIDS wheels force it: regenerate it
    (`python deploy/docker/locks.py gpu-lock`) when requirements.lock changes."""
    locks = _locks_module()
    cpu, gpu = locks.read_lock(ROOT / "requirements.lock"), locks.read_lock(ROOT / "requirements-gpu.lock")
    moved = {name for name in cpu.keys() & gpu.keys() if cpu[name] != gpu[name]}
    assert moved <= set(locks.RELEASED), f"stale requirements-gpu.lock: {sorted(moved - set(locks.RELEASED))}"

"""The alert rules and the Grafana dashboard against the code: every series they name is one the processors
export (with the labels they match on), rate() only ever reads counters, every expression parses, each alert
fires and stays quiet when its promtool unit tests say, and the Helm chart embeds this very rules file.

promtool comes from Debian's `prometheus` package; without it these tests fail (they never skip)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

import processors
import streams
from processors.gpu_metrics import LABELS as GPU_LABELS
from processors.gpu_metrics import NvmlCollector

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/streamquant.rules.yml"
RULES_TESTS = ROOT / "deploy/prometheus/rules/streamquant.rules.test.yml"
HELM_RULES = ROOT / "helm/streamquant/files/streamquant.rules.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/streamquant.json"
README = ROOT / "README.md"

# Series Prometheus makes itself for every target, and the labels it attaches to every scraped series.
PROMETHEUS_SERIES: dict[str, set[str]] = {"up": set()}
TARGET_LABELS = {"job", "instance", "namespace", "pod"}
# The sample names a metric family of each type is exposed as (prometheus_client strips `_total` from a counter
# family's name), and the label each suffix adds.
SUFFIXES: dict[str, tuple[tuple[str, set[str]], ...]] = {
    "counter": (("_total", set()), ("_created", set())),
    "gauge": (("", set()),),
    "histogram": (("_bucket", {"le"}), ("_sum", set()), ("_count", set()), ("_created", set())),
    "summary": (("", {"quantile"}), ("_sum", set()), ("_count", set()), ("_created", set())),
    "info": (("_info", set()),),
    "stateset": (("", set()),),
    "unknown": (("", set()),),
}
COUNTER_SUFFIXES = {("counter", "_total"), ("histogram", "_bucket"), ("histogram", "_sum"), ("histogram", "_count"),
                    ("summary", "_sum"), ("summary", "_count")}
RATE_FUNCTIONS = {"rate", "irate", "increase", "resets"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "atan2", "inf", "nan"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
GRAFANA_RANGES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


# ---------------------------------------------------------------------- what the code exports

@dataclass(frozen=True)
class Series:
    labels: frozenset[str]
    counter: bool  # a value that only goes up (what rate() and increase() are for)


def exported_series() -> dict[str, Series]:
    """Every sample name the processes can expose, from the metrics their modules define plus the GPU
    collector's, mapped to its label names."""
    for pkg in (processors, streams):
        for mod in pkgutil.walk_packages(pkg.__path__, f"{pkg.__name__}."):
            importlib.import_module(mod.name)
    out: dict[str, Series] = {}

    def add(family_name: str, kind: str, labels: set[str]) -> None:
        for suffix, extra in SUFFIXES[kind]:
            out[family_name + suffix] = Series(frozenset(labels | extra), (kind, suffix) in COUNTER_SUFFIXES)

    # prometheus_client shows a labelled metric's label names nowhere public before it has a child
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.collect():
            add(family.name, family.type, set(getattr(collector, "_labelnames", ())))
    no_device = SimpleNamespace(nvmlDeviceGetCount=lambda: 0)
    for family in NvmlCollector(no_device).describe():
        add(family.name, family.type, set(GPU_LABELS) if family.type == "gauge" else set())
    for name, labels in PROMETHEUS_SERIES.items():
        out[name] = Series(frozenset(labels), False)
    return out


# ---------------------------------------------------------------------- what an expression names

TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w:]))
  | (?P<number>(?:0x[0-9a-fA-F]+|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)(?![\w:]))
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},])
  | (?P<space>\s+)
""", re.VERBOSE)


@dataclass
class Names:
    metrics: set[str] = field(default_factory=set)
    matched_labels: dict[str, set[str]] = field(default_factory=dict)  # metric -> labels in its {matchers}
    rated: set[str] = field(default_factory=set)  # metrics read by rate(), increase() ...
    problems: list[str] = field(default_factory=list)


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read {expr[pos:pos + 20]!r} in {expr!r}")
        kind = m.lastgroup or ""
        if kind != "space":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def names_in(expr: str) -> Names:
    """The metric names an expression selects, the labels its selectors match on, and which metrics it reads
    with a rate function. Label lists (by, on, group_left ...) and function names are not metrics."""
    found = Names()
    toks = tokens(expr)
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in LABEL_LIST_KEYWORDS and following == "(":
            i = toks.index((("op", ")")), i)  # a label list holds no nested parentheses
        elif kind == "ident" and text in KEYWORDS:
            pass
        elif kind == "ident" and following in ("(", "by", "without"):  # a function or an aggregation
            if text in RATE_FUNCTIONS and i + 2 < len(toks) and toks[i + 2][0] == "ident":
                found.rated.add(toks[i + 2][1])
        elif kind == "ident":
            found.metrics.add(text)
            labels = found.matched_labels.setdefault(text, set())
            if following == "{":
                i += 2
                while toks[i][1] != "}":
                    if toks[i][0] == "ident":
                        labels.add(toks[i][1])
                    i += 1
        elif kind == "op" and text == "{":
            found.problems.append(f"a selector without a metric name in {expr!r}")
        elif kind == "variable":
            found.problems.append(f"an unknown Grafana variable {text} in {expr!r}")
        i += 1
    return found


def test_names_in_tells_metrics_from_labels_and_functions() -> None:
    got = names_in('sum by (a, b) (rate(foo_total{c="x", d=~"y|z"}[$__rate_interval])) / on (e) group_left (f) '
                   '(bar == 1) or histogram_quantile(0.99, sum by (le) (increase(baz_bucket[5m]))) > 1e3 and up')
    assert got.metrics == {"foo_total", "bar", "baz_bucket", "up"}
    assert got.matched_labels == {"foo_total": {"c", "d"}, "bar": set(), "baz_bucket": set(), "up": set()}
    assert got.rated == {"foo_total", "baz_bucket"}
    assert not got.problems
    assert names_in('{__name__="x"}').problems
    assert names_in("rate(x[$foo])").metrics == {"x"}  # a range is never read as names


# ---------------------------------------------------------------------- the expressions we ship

def rule_expressions() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    for panel in dashboard_panels(board["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            selector = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query)
            yield f"variable {var['name']}", selector.group(1) if selector else query


def all_expressions() -> list[tuple[str, str]]:
    return [*rule_expressions(), *dashboard_expressions()]


def test_every_series_the_rules_and_dashboard_name_is_exported() -> None:
    exported = exported_series()
    problems: list[str] = []
    for where, expr in all_expressions():
        found = names_in(expr)
        problems += [f"{where}: {p}" for p in found.problems]
        for metric in sorted(found.metrics):
            series = exported.get(metric)
            if series is None:
                problems.append(f"{where}: {metric} is not exported by any processor")
                continue
            unknown = found.matched_labels[metric] - series.labels - TARGET_LABELS
            if unknown:
                problems.append(f"{where}: {metric} has no label {', '.join(sorted(unknown))} "
                                f"(it has {', '.join(sorted(series.labels)) or 'none'})")
        for metric in sorted(found.rated & exported.keys()):
            if not exported[metric].counter:
                problems.append(f"{where}: rate/increase of {metric}, which is not a counter")
    assert not problems, "drift between the code's metrics and the rules/dashboard:\n" + "\n".join(problems)


def test_the_drift_check_catches_a_renamed_metric_and_a_wrong_label() -> None:
    exported = exported_series()
    assert "streamquant_consumer_lag" in exported and "streamquant_tick_to_publish_seconds_bucket" in exported
    assert "streamquant_dead_letters_total" in exported and "streamquant_dead_letters" not in exported
    assert exported["streamquant_job_queue_wait_seconds_bucket"].labels == {"le"}
    assert exported["streamquant_cache_hits_total"].counter and not exported["streamquant_jobs_queued"].counter
    assert "streamquant_gpu_memory_used_bytes" in exported and "streamquant_gpu_read_errors_total" in exported
    assert "tier" not in exported["streamquant_jobs_ended_total"].labels


# ---------------------------------------------------------------------- promtool

def promtool_binary() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: it comes with Debian's `prometheus` package "
                    "(apt-get install --no-install-recommends prometheus)")
    return binary


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool_binary(), *map(str, args)], capture_output=True, text=True, timeout=120,
                          check=False)


def test_exported_metrics_pass_promtools_lint() -> None:
    # Every family once more in a registry of our own, each with one child, so that promtool sees them all
    # (naming: counters end in _total, base units, help text) without touching the global registry.
    exported_series()
    registry = CollectorRegistry()
    kinds: dict[str, Any] = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
    for collector in list(REGISTRY._collector_to_names):
        labelnames = tuple(getattr(collector, "_labelnames", ()))
        for family in collector.collect():
            if family.name.startswith("streamquant_"):
                metric = kinds[family.type](family.name, family.documentation, labelnames, registry=registry)
                if labelnames:
                    metric.labels(*("x" for _ in labelnames))
    one_gpu = SimpleNamespace(
        NVMLError=RuntimeError, nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: "GPU-1", nvmlDeviceGetName=lambda h: "GPU",
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=50),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=1, total=2))
    registry.register(NvmlCollector(one_gpu))
    out = subprocess.run([promtool_binary(), "check", "metrics"], input=generate_latest(registry).decode(),
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_checks_the_rules() -> None:
    out = promtool("check", "rules", RULES)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    out = promtool("test", "rules", RULES_TESTS)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    alerts = {name for name, _ in rule_expressions()}
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fires == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown staying quiet"


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    # promtool has no query linter; a rule file of recording rules makes it parse every expression
    rules = []
    for n, (_where, expr) in enumerate(dashboard_expressions()):
        for var, value in GRAFANA_RANGES.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:expr_{n}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = promtool("check", "rules", path)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------- the files themselves

def test_helm_chart_embeds_the_same_rules() -> None:
    assert HELM_RULES.read_bytes() == RULES.read_bytes(), \
        f"{HELM_RULES.relative_to(ROOT)} differs from {RULES.relative_to(ROOT)}: copy the rules file over it"


def test_dashboard_is_provisionable() -> None:
    board = json.loads(DASHBOARD.read_text())
    panels = list(dashboard_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert board["uid"] == "streamquant"
    assert [v["name"] for v in board["templating"]["list"] if v["type"] == "datasource"] == ["datasource"]
    for p in panels:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]


def test_readme_lists_every_alert() -> None:
    _before, heading, section = README.read_text().partition("\n## Observability\n")
    assert heading, "README.md has no Observability section"
    section = section.split("\n## ", 1)[0]
    missing = [name for name, _ in rule_expressions() if name not in section]
    assert not missing, f"README.md's Observability section does not list {missing}"


def test_a_revoked_partitions_lag_is_no_longer_reported() -> None:
    # Its new owner reports it; a value frozen here would keep StreamQuantConsumerLagHigh firing.
    from processors import metrics
    from processors.eos import EosProcessor

    callbacks: dict[str, Any] = {}

    class Probe(EosProcessor):
        NAME = "lag-probe"

        def _revoked(self, partitions: list[tuple[str, int]]) -> None:
            callbacks["revoked"] = partitions

    def source_factory(on_assign: Any, on_revoke: Any) -> Any:
        callbacks["on_revoke"] = on_revoke
        return SimpleNamespace()

    sink: Any = SimpleNamespace()
    Probe(source_factory, lambda: sink)
    for p, lag in ((0, 500), (1, 70)):
        metrics.CONSUMER_LAG.labels("lag-probe", str(p)).set(lag)
    callbacks["on_revoke"]([("ticks", 0), ("ticks", 7)])  # 7 never had a lag: nothing to remove
    assert callbacks["revoked"] == [("ticks", 0), ("ticks", 7)]
    assert REGISTRY.get_sample_value("streamquant_consumer_lag", {"processor": "lag-probe", "partition": "0"}) is None
    assert REGISTRY.get_sample_value("streamquant_consumer_lag", {"processor": "lag-probe", "partition": "1"}) == 70
    metrics.CONSUMER_LAG.remove("lag-probe", "1")

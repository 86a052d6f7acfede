"""`streamquant run jobs`, `submit backtest`, `jobs status|result`, `cache stats`: wiring of the job plane."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from confluent_kafka.admin import NewTopic
from prometheus_client import start_http_server
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from processors.backtest import params_label
from processors.gpu_metrics import register_gpu_metrics
from processors.jobs import model
from processors.jobs.app import RESULT_TOPICS, PlaneConfig, PlaneTopics, build_app
from processors.jobs.cache import DiskTier, MemoryTier, ResultCache
from processors.jobs.kinds import KINDS, JobContext, gpu_visible
from processors.jobs.scheduler import Scheduler
from processors.jobs.workers import WorkerPool
from schemas.codec import InvalidMessage
from streamquant.errors import UserError
from streamquant.kafka_io import (
    admin_client,
    end_offset,
    follow_messages,
    last_for_key,
    partition_for_key,
    topic_partitions,
)
from streamquant.settings import Settings
from streams.sink import KafkaSink
from streams.topics import TopicCatalog

console = Console()
err_console = Console(stderr=True)
submit_app = typer.Typer(no_args_is_help=True, help="Submit a job to the control plane (as a command message).")
jobs_app = typer.Typer(no_args_is_help=True, help="Jobs: status and results, read from Kafka.")
cache_app = typer.Typer(no_args_is_help=True, help="The result cache of the job plane.")
COMMAND_TOPICS = {"backtest": "backtest.commands", "features": "backtest.commands", "train": "ml.commands"}


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    app.add_typer(submit_app, name="submit")
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(cache_app, name="cache")
    run_app.command("jobs")(run_jobs)


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


def events_topic(settings: Settings) -> str:
    return f"{settings.topics.prefix}{settings.jobs.app_id}-events"


# ---------------------------------------------------------------------- run jobs

def run_jobs(ctx: typer.Context) -> None:
    """The job control plane: consume commands, schedule jobs on worker processes, publish status and results."""
    import faust
    import redis.asyncio as aioredis

    settings = _settings(ctx)
    j = settings.jobs
    catalog = TopicCatalog(settings.topics.catalog_options())
    admin = admin_client(settings.kafka)
    commands = catalog.name("backtest.commands")
    parts = topic_partitions(admin, commands)
    ml_commands = catalog.name("ml.commands")
    if parts is None:
        raise UserError("the topics do not exist (create the catalog with `streamquant topics create`)")
    events = events_topic(settings)
    if topic_partitions(admin, events) is None:
        for fut in admin.create_topics([NewTopic(events, len(parts), 1)]).values():
            fut.result(30)
    topics = PlaneTopics(commands={commands: catalog.name("backtest.commands.dlq"),
                                   ml_commands: catalog.name("ml.commands.dlq")},
                         events=events, status=catalog.name("jobs.status"),
                         results={k: catalog.name(v) for k, v in RESULT_TOPICS.items()})
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    redis = aioredis.from_url(settings.redis.url, password=password, socket_timeout=0.5,
                              socket_connect_timeout=0.5)
    cache = ResultCache(MemoryTier(j.cache_l1_ttl_s), DiskTier(j.cache_dir, j.cache_l2_ttl_s), redis, j.cache_l3_ttl_s)
    visible = gpu_visible()
    context = JobContext(j.artifact_root, settings.kafka, catalog.name("bars"), catalog.name("models"))

    def scheduler_factory(emit: Any) -> Scheduler:
        return Scheduler(WorkerPool(), emit, context=context, max_concurrent=j.max_concurrent,
                         gpu_slots=j.gpu_slots, gpu_wait_s=j.gpu_wait_s, gpu_visible=visible)

    config = PlaneConfig(j.app_id, settings.kafka, topics, len(parts), j.web_host, j.web_port)
    app, _plane = build_app(config, cache, scheduler_factory)
    if settings.metrics.port:
        start_http_server(settings.metrics.port)
        register_gpu_metrics()
    console.print(f"jobs: {commands}, {ml_commands} → {topics.status}, results; {j.max_concurrent} at once, "
                  f"GPU {'visible' if visible else 'not visible'}; HTTP on {j.web_host}:{j.web_port}")
    logging.basicConfig(level=logging.INFO)
    faust.Worker(app, loglevel="info", quiet=True).execute_from_commandline()


# ---------------------------------------------------------------------- submit

def _load_command(path: Path, kind: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} must hold a JSON object")
    obj.setdefault("job_id", str(uuid.uuid4()))
    obj.setdefault("type", kind)
    try:
        KINDS[kind].codec.decode_obj(obj)
    except InvalidMessage as err:
        raise UserError(f"{path}: {err.reason}") from None
    return obj


SUBMITTED = {
    "backtest": "Write a backtest command (BacktestCommand) to `backtest.commands`; with --wait, show its progress "
                "and metrics.",
    "features": "Write a features command (FeaturesCommand: universe, period, data → a Parquet feature table); "
                "with --wait, follow it.",
    "train": "Write a training command (TrainCommand) to `ml.commands`; the trained forest becomes the model's "
             "next version.",
}


def _submit_command(kind: str) -> None:
    def submit(
        ctx: typer.Context,
        config_file: Annotated[Path, typer.Argument(help="the command as JSON (job_id optional)")],
        wait: Annotated[bool, typer.Option(help="follow the job until it ends, then print its result")] = False,
        timeout: Annotated[float, typer.Option(help="with --wait: give up after this many seconds")] = 3600.0,
    ) -> None:
        _submit(_settings(ctx), kind, _load_command(config_file, kind), wait, timeout)

    submit.__doc__ = SUBMITTED[kind]
    submit_app.command(kind)(submit)


for _kind in SUBMITTED:
    _submit_command(_kind)


def _submit(settings: Settings, kind: str, command: dict[str, Any], wait: bool, timeout: float) -> None:
    catalog = TopicCatalog(settings.topics.catalog_options())
    admin = admin_client(settings.kafka)
    cmd_topic, status_topic = catalog.name(COMMAND_TOPICS[kind]), catalog.name("jobs.status")
    result_topic = catalog.name(RESULT_TOPICS[kind])
    parts = topic_partitions(admin, status_topic)
    if parts is None or topic_partitions(admin, cmd_topic) is None:
        raise UserError("the topics do not exist (create the catalog with `streamquant topics create`)")
    key = command["job_id"].encode()
    p = partition_for_key(key, len(parts))
    status_start, result_start = end_offset(settings.kafka, status_topic, p), end_offset(settings.kafka,
                                                                                         result_topic, p)
    sink = KafkaSink(settings.kafka)
    sink.write(cmd_topic, key, orjson.dumps(command))
    sink.flush()
    console.print(f"submitted {kind} job [bold]{command['job_id']}[/bold] to {cmd_topic}")
    if not wait:
        return
    final = _follow_status(settings, status_topic, p, status_start, key, timeout)
    if final["state"] != "succeeded":
        raise UserError(f"job {command['job_id']} {final['state']}: {final.get('reason') or 'no reason given'}")
    for m in follow_messages(settings.kafka, result_topic, {p: result_start}, seconds=60):
        if m.key == key and m.value is not None:
            _print_result(orjson.loads(m.value), final)
            return
    raise UserError(f"job {command['job_id']} succeeded but its result did not arrive within 60s")


def _follow_status(settings: Settings, topic: str, partition: int, start: int, key: bytes,
                   timeout: float) -> dict[str, Any]:
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("queued", total=1.0)
        for m in follow_messages(settings.kafka, topic, {partition: start}, seconds=timeout):
            if m.key != key or m.value is None:
                continue
            status = orjson.loads(m.value)
            label = status["state"] + (f" on {status['backend']}" if status.get("backend") else "")
            progress.update(task, description=label, completed=status.get("progress") or 0.0)
            if status["state"] in model.TERMINAL:
                return dict(status)
    raise UserError(f"the job did not end within {timeout:g}s (it goes on; see `streamquant jobs status`)")


METRIC_COLUMNS = {"total_return": "return", "cagr": "CAGR", "sharpe": "Sharpe", "max_drawdown": "max DD",
                  "trades": "trades", "win_rate": "win"}
PERCENT = {"total_return", "cagr", "max_drawdown", "win_rate"}


def _print_result(result: dict[str, Any], status: dict[str, Any]) -> None:
    if "version" in result and "model" in result:  # a training job: the registered version
        console.print(f"model {result['model']} v{result['version']} registered ({result.get('backend')}, "
                      f"{result.get('rows', 0):,} rows, {result.get('train_seconds', 0):.1f} s); "
                      f"promote it with `streamquant models promote {result['model']} {result['version']}`")
        for k, v in sorted(result.get("metrics", {}).items()):
            console.print(f"  {k}: {_fmt(v)}")
        return
    if "results" not in result:  # a features job: the table is the artifact
        console.print(f"job {result['job_id']}: {result['rows']:,} rows × {len(result['columns'])} columns for "
                      f"{result['symbols']} symbols → {result['artifact']}")
        return
    table = Table(title=f"job {result['job_id']} ({status.get('backend') or 'cpu'})")
    table.add_column("params", no_wrap=True)
    for label in METRIC_COLUMNS.values():
        table.add_column(label, justify="right", no_wrap=True)
    for entry in result.get("results", [])[:50]:
        metrics = entry.get("metrics", {})
        cells = [_fmt(metrics.get(n), percent=n in PERCENT) for n in METRIC_COLUMNS]
        table.add_row(params_label(entry.get("params", {})), *cells)
    console.print(table)
    console.print("(all metrics, per symbol and per parameter set: `streamquant jobs result ID` and the artifact)")
    if len(result.get("results", [])) > 50:
        console.print(f"… {len(result['results']) - 50} more parameter sets in the result")
    if result.get("artifact"):
        console.print(f"artifact: {result['artifact']}")


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "—"
    if percent:
        return f"{100 * float(value):.1f}%"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


# ---------------------------------------------------------------------- jobs status / result

@jobs_app.command("status")
def job_status(ctx: typer.Context, job_id: str) -> None:
    """A job's newest status (from the compacted jobs.status topic)."""
    settings = _settings(ctx)
    topic = TopicCatalog(settings.topics.catalog_options()).name("jobs.status")
    found = _last(settings, topic, job_id)
    if found is None:
        raise UserError(f"no job {job_id!r} in {topic}")
    status = orjson.loads(found)
    table = Table(show_header=False)
    for k, v in status.items():
        table.add_row(k, str(v) if k != "ts" else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v / 1000)))
    console.print(table)


@jobs_app.command("result")
def job_result(ctx: typer.Context, job_id: str) -> None:
    """A finished job's result message, as JSON."""
    settings = _settings(ctx)
    catalog = TopicCatalog(settings.topics.catalog_options())
    for logical in RESULT_TOPICS.values():
        found = _last(settings, catalog.name(logical), job_id)
        if found is not None:
            console.print_json(found.decode())
            return
    raise UserError(f"no result for job {job_id!r} (see `streamquant jobs status {job_id}`)")


def _last(settings: Settings, topic: str, job_id: str) -> bytes | None:
    parts = topic_partitions(admin_client(settings.kafka), topic)
    if parts is None:
        raise UserError(f"topic {topic} does not exist")
    found = last_for_key(settings.kafka, topic, job_id.encode(), len(parts))
    return None if found is None else found.value


# ---------------------------------------------------------------------- cache

@cache_app.command("stats")
def cache_stats(ctx: typer.Context) -> None:
    """Hits, misses and errors per cache tier, from the running job plane."""
    j = _settings(ctx).jobs
    url = f"http://{j.web_host}:{j.web_port}/cache/stats"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            stats = orjson.loads(response.read())
    except (urllib.error.URLError, OSError) as err:
        raise UserError(f"the job plane is not answering at {url} ({err}); is `streamquant run jobs` running?") \
            from None
    table = Table(title="result cache")
    for col in ("tier", "hits", "misses", "errors"):
        table.add_column(col, justify="right")
    for tier, counts in stats["tiers"].items():
        table.add_row(tier, str(counts["hits"]), str(counts["misses"]), str(counts["errors"]))
    console.print(table)
    rate = stats.get("hit_rate")
    console.print(f"lookups: {stats['lookups']}, hit rate: {'—' if rate is None else f'{rate:.1%}'}")

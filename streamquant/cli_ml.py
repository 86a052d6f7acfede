"""`streamquant run predictions`, `models list|show|promote|rollback`, `predict`: wiring of the ML side."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import orjson
import typer
from prometheus_client import start_http_server
from rich.console import Console
from rich.table import Table

from processors.errors import InvalidCommand
from processors.feature_backend import DeviceBackend, probe_forest_gpu
from processors.gpu_metrics import register_gpu_metrics
from processors.predict_service import PredictService
from processors.prediction_processor import PredictionProcessor, PredictionTopics, Thresholds
from processors.registry import RegistryReader, load_scorer, publish, read_registry, verify_artifact
from streamquant.cli_run import online_store, stop_on_signals
from streamquant.errors import UserError
from streamquant.kafka_io import admin_client, end_offset, follow_messages, partition_for_key, topic_partitions
from streamquant.settings import Settings
from streams.sink import KafkaSink
from streams.source import BatchSource
from streams.topics import TopicCatalog
from streams.transactions import TransactionalSink

console = Console()
models_app = typer.Typer(no_args_is_help=True, help="The model registry (the compacted `models` topic).")


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.command("predict")(predict)
    run_app.command("predictions")(run_predictions)


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


# ---------------------------------------------------------------------- run predictions

def run_predictions(
    ctx: typer.Context,
    stop_when_idle: Annotated[float | None, typer.Option(help="exit after this many seconds without input")] = None,
) -> None:
    """Score feature vectors with the active model, exactly once; answer Predict requests."""
    settings = _settings(ctx)
    p = settings.predictions
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    catalog = TopicCatalog(settings.topics.catalog_options())
    admin = admin_client(settings.kafka)
    topics = PredictionTopics(catalog.name("features"), catalog.name("predictions"), catalog.name("features.dlq"))
    if topic_partitions(admin, topics.features) is None:
        raise UserError("the topics do not exist (create the catalog with `streamquant topics create`)")
    instance = p.instance_id or socket.gethostname()
    ingest = settings.ingest
    thresholds = Thresholds(p.long_threshold, p.short_threshold)

    def source_factory(on_assign: Any, on_revoke: Any) -> BatchSource:
        return BatchSource(settings.kafka, p.group, [topics.features], max_messages=ingest.max_batch,
                           max_wait_s=ingest.max_wait_ms / 1000, on_assign=on_assign, on_revoke=on_revoke)

    def sink_factory() -> TransactionalSink:
        return TransactionalSink(settings.kafka, f"{p.group}-{instance}",
                                 transaction_timeout_ms=p.transaction_timeout_ms)

    models = catalog.name("models")
    batches = DeviceBackend(p.backend, "predictions", probe_forest_gpu, p.gpu_min_rows)
    requests = DeviceBackend(p.backend, "predict", probe_forest_gpu, p.gpu_min_rows)
    processor = PredictionProcessor(p.model, p.interval, topics, source_factory, sink_factory,
                                    RegistryReader(settings.kafka, models),
                                    functools.partial(load_scorer, backend=batches), thresholds)
    processor.freeze_gc = True
    service = PredictService(
        # Static membership: a restarted instance takes its request partitions back at once instead of
        # leaving them unanswered until its dead predecessor's session times out.
        BatchSource(settings.kafka, f"{p.group}-predict", [catalog.name("ml.predict.requests")], max_messages=500,
                    max_wait_s=0.0, auto_offset_reset="latest",
                    extra={"group.instance.id": f"{instance}-predict", "session.timeout.ms": 10_000}),
        KafkaSink(settings.kafka, extra={"linger.ms": 0}), catalog.name("ml.predict.responses"),
        catalog.name("ml.predict.requests.dlq"), RegistryReader(settings.kafka, models),
        functools.partial(load_scorer, backend=requests),
        online_store(settings), p.interval, thresholds)
    if settings.metrics.port:
        start_http_server(settings.metrics.port)
        register_gpu_metrics()
    should_stop = stop_on_signals()
    done = threading.Event()
    console.print(f"predictions: {topics.features} ({p.interval}) → {topics.predictions} with the active version "
                  f"of {p.model}, as {processor.sink.transactional_id}; Predict requests answered")
    answering = threading.Thread(target=_answer_requests, args=(service, lambda: should_stop() or done.is_set()),
                                 name="predict", daemon=True)
    answering.start()
    idle_since = time.monotonic()
    try:
        while not should_stop():
            if answering_failed := getattr(service, "failure", None):
                raise answering_failed
            worked = processor.step()
            if worked or not processor.source.assignment():
                idle_since = time.monotonic()
            elif stop_when_idle is not None and time.monotonic() - idle_since >= stop_when_idle:
                if processor.source.caught_up():
                    break
                idle_since = time.monotonic()
    finally:
        done.set()
        answering.join(10)
        processor.close()
        service.close()


def _answer_requests(service: PredictService, stop: Callable[[], bool]) -> None:
    """Request-reply on its own thread and clients, so an answer never waits for a feature batch."""
    try:
        while not stop():
            service.step(max_wait_s=0.1)
    except Exception as err:  # handed to the main loop, which stops the processor with it
        service.failure = err


# ---------------------------------------------------------------------- models

@models_app.command("list")
def models_list(ctx: typer.Context) -> None:
    """Every model name with its versions and the active one."""
    registry = _registry(ctx)
    table = Table(title="models")
    for col in ("model", "versions", "active", "created (active)"):
        table.add_column(col)
    for name, versions in sorted(registry.versions.items()):
        active = registry.active(name)
        table.add_row(name, ", ".join(f"v{v}" for v in sorted(versions)), f"v{active.version}" if active else "—",
                      _when(active.created) if active else "—")
    console.print(table)


@models_app.command("show")
def models_show(ctx: typer.Context, name: str,
                version: Annotated[int | None, typer.Option(help="default: the active version")] = None) -> None:
    """A version's metadata and metrics (the active one by default)."""
    registry = _registry(ctx)
    try:
        v = registry.get(name, version)
    except InvalidCommand as err:
        raise UserError(str(err)) from None
    table = Table(title=f"{name} v{v.version}", show_header=False)
    rows = [("aliases", ", ".join(v.aliases) or "—"), ("features", ", ".join(v.features)),
            ("label", f"{v.label.kind}, horizon {v.label.horizon}, dead zone {v.label.dead_zone:g}"),
            ("data", f"{v.data_start} → {v.data_end}"), ("backend", v.backend or "—"), ("created", _when(v.created)),
            ("artifact", v.artifact), ("sha256", v.sha256)]
    rows += [(k, "—" if x is None else f"{x:.4f}") for k, x in sorted(v.metrics.items())]
    if v.rows:
        rows += [("rows", f"{v.rows:,}"), ("training time", f"{v.train_seconds:.1f} s"), ("job", v.job_id or "—")]
    if v.confusion_matrix:
        rows.append(("confusion matrix", "\n".join(" ".join(f"{n:>8,}" for n in row) for row in v.confusion_matrix)))
    if v.feature_importances:
        ranked = sorted(v.feature_importances.items(), key=lambda kv: -kv[1])
        rows.append(("feature importances", "\n".join(f"{name} {share:.3f}" for name, share in ranked)))
    for k, x in rows:
        table.add_row(k, x)
    console.print(table)


@models_app.command("promote")
def models_promote(ctx: typer.Context, name: str, version: int) -> None:
    """Make VERSION the active version of NAME."""
    _change(ctx, name, lambda reg: reg.promote(name, version))


@models_app.command("rollback")
def models_rollback(ctx: typer.Context, name: str) -> None:
    """Make the version that was active before the current one active again."""
    _change(ctx, name, lambda reg: reg.rollback(name))


def _change(ctx: typer.Context, name: str, change: Any) -> None:
    settings = _settings(ctx)
    topic = TopicCatalog(settings.topics.catalog_options()).name("models")
    registry = read_registry(settings.kafka, topic)
    try:
        records = change(registry)
        if records and os.path.exists(records[0].artifact):  # the version becoming active must be servable
            verify_artifact(records[0])
        elif records:
            console.print(f"[yellow]note:[/] {records[0].artifact} is not readable here: its sha256 is checked "
                          "by the predictors that load it")
    except InvalidCommand as err:
        raise UserError(str(err)) from None
    publish(settings.kafka, topic, records)
    for r in records:
        registry.apply(r)
    console.print(f"{name}: v{registry.get(name).version} is active")


def _registry(ctx: typer.Context) -> Any:
    settings = _settings(ctx)
    admin_client(settings.kafka)
    return read_registry(settings.kafka, TopicCatalog(settings.topics.catalog_options()).name("models"))


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


# ---------------------------------------------------------------------- predict

def predict(
    ctx: typer.Context,
    symbols: Annotated[list[str], typer.Argument(help="symbols whose latest feature vector to score")],
    model: Annotated[str | None, typer.Option(help="default: predictions.model")] = None,
    version: Annotated[int | None, typer.Option(help="default: the active version")] = None,
    interval: Annotated[str | None, typer.Option(help="default: predictions.interval")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer")] = 10.0,
) -> None:
    """Request-reply Predict through Kafka for the latest feature vectors of SYMBOLS."""
    settings = _settings(ctx)
    catalog = TopicCatalog(settings.topics.catalog_options())
    requests, responses = catalog.name("ml.predict.requests"), catalog.name("ml.predict.responses")
    parts = topic_partitions(admin_client(settings.kafka), responses)
    if parts is None:
        raise UserError("the topics do not exist (create the catalog with `streamquant topics create`)")
    cid = str(uuid.uuid4())
    p = partition_for_key(cid.encode(), len(parts))
    start = end_offset(settings.kafka, responses, p)
    request: dict[str, Any] = {"correlation_id": cid, "model": model or settings.predictions.model, "symbols": symbols,
               "interval": interval or settings.predictions.interval}
    if version is not None:
        request["version"] = version
    sink = KafkaSink(settings.kafka, extra={"linger.ms": 0})
    sink.write(requests, cid.encode(), orjson.dumps(request))
    sink.flush()
    for m in follow_messages(settings.kafka, responses, {p: start}, seconds=timeout):
        if m.key == cid.encode() and m.value is not None:
            answer = orjson.loads(m.value)
            if answer.get("error"):
                raise UserError(f"predict: {answer['error']}")
            table = Table(title=f"{answer['model']} v{answer['version']}")
            for col in ("symbol", "P(up)", "signal"):
                table.add_column(col, justify="right")
            for s, prob, sig in zip(symbols, answer["probabilities"], answer["signals"], strict=True):
                table.add_row(s, f"{prob:.4f}", str(sig))
            console.print(table)
            return
    raise UserError(f"no answer within {timeout:g}s (is `streamquant run predictions` running?)")

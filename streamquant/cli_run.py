"""`streamquant run features` and `streamquant features compute`: wiring of the feature engine."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import redis
import typer
from prometheus_client import start_http_server
from rich.console import Console

from gpu_kernels.features import FeatureError
from processors.feature_processor import FeatureProcessor, FeatureTopics
from processors.features import EngineConfig, FeatureEngine, features_for_bars, interval_ms
from processors.gpu_metrics import register_gpu_metrics
from processors.online_store import OnlineStore
from schemas.records import Tick
from schemas.ticks import TickColumns
from streamquant.errors import UserError
from streamquant.kafka_io import admin_client, topic_partitions
from streamquant.settings import Settings
from streamquant.tables import read_table, write_table
from streams.changelog import read_changelog, read_range
from streams.source import BatchSource
from streams.topics import TopicCatalog
from streams.transactions import TransactionalSink

console = Console()
run_app = typer.Typer(no_args_is_help=True, help="Run a processor.")
features_app = typer.Typer(no_args_is_help=True, help="Features offline, from files.")

BAR_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")
TICK_COLUMNS = ("symbol", "ts", "price", "size")


def register(app: typer.Typer) -> None:
    app.add_typer(run_app, name="run")
    app.add_typer(features_app, name="features")


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


def _engine(settings: Settings) -> FeatureEngine:
    f = settings.features
    try:
        for iv in f.intervals:
            interval_ms(iv)
        return FeatureEngine(EngineConfig(intervals=tuple(f.intervals), lateness_ms=f.lateness_ms,
                                          features=tuple(f.features), backend=f.backend,
                                          gpu_min_bars=f.gpu_min_bars))
    except (ValueError, FeatureError) as err:
        raise UserError(f"features settings: {err}") from None


def online_store(settings: Settings) -> OnlineStore:
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    client = redis.Redis.from_url(settings.redis.url, password=password, socket_timeout=1.0,
                                  socket_connect_timeout=1.0)
    return OnlineStore(client, settings.predictions.online_ttl_s, namespace=settings.topics.prefix)


def stop_on_signals() -> Callable[[], bool]:
    """SIGTERM and Ctrl-C ask a processor to stop after its current batch (never in the middle of one)."""
    stopping = threading.Event()

    def stop(_signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return stopping.is_set


def build_feature_processor(settings: Settings) -> FeatureProcessor:
    """The feature processor wired to Kafka as settings say (the CLI and the benchmarks use this)."""
    engine = _engine(settings)
    catalog = TopicCatalog(settings.topics.catalog_options())
    topics = FeatureTopics(*(catalog.name(n) for n in ("ticks", "bars", "features", "ticks.dlq", "ticks.late",
                                                       "features.changelog")))
    admin = admin_client(settings.kafka)
    ticks_parts = topic_partitions(admin, topics.ticks)
    log_parts = topic_partitions(admin, topics.changelog)
    if ticks_parts is None or log_parts is None:
        raise UserError("the topics do not exist (create the catalog with `streamquant topics create`)")
    if len(log_parts) != len(ticks_parts):
        raise UserError(f"{topics.changelog} has {len(log_parts)} partitions but {topics.ticks} has "
                        f"{len(ticks_parts)}: the changelog must be co-partitioned with its input")
    instance = settings.features.instance_id or socket.gethostname()
    ingest = settings.ingest

    def source_factory(on_assign: Any, on_revoke: Any) -> BatchSource:
        return BatchSource(settings.kafka, settings.features.group, [topics.ticks], max_messages=ingest.max_batch,
                           max_wait_s=settings.features.max_wait_ms / 1000, on_assign=on_assign,
                           on_revoke=on_revoke)

    def sink_factory() -> TransactionalSink:
        return TransactionalSink(settings.kafka, f"{settings.features.group}-{instance}",
                                 transaction_timeout_ms=settings.features.transaction_timeout_ms)

    def restore(partitions: list[int]) -> dict[int, dict[bytes, bytes | None]]:
        return read_changelog(settings.kafka, topics.changelog, partitions, timeout_s=120)

    def replay(partition: int, start: int, end: int) -> Iterator[list[bytes | None]]:
        return read_range(settings.kafka, topics.ticks, partition, start, end, chunk=ingest.max_batch)

    store = online_store(settings) if settings.features.online_store else None
    return FeatureProcessor(engine, topics, source_factory, sink_factory, restore, replay,
                            namespace=settings.features.group, online_store=store,
                            checkpoint_interval_s=settings.features.checkpoint_interval_ms / 1000,
                            commit_interval_s=settings.features.commit_interval_ms / 1000,
                            close_gather_s=settings.features.close_gather_ms / 1000)


@run_app.command("features")
def run_features(
    ctx: typer.Context,
    stop_when_idle: Annotated[float | None, typer.Option(help="exit after this many seconds without input")] = None,
) -> None:
    """Consume ticks; publish bars and features exactly once (Ctrl-C or SIGTERM stops cleanly)."""
    settings = _settings(ctx)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    processor = build_feature_processor(settings)
    processor.freeze_gc = True
    if settings.metrics.port:
        start_http_server(settings.metrics.port)
        register_gpu_metrics()
    should_stop = stop_on_signals()
    t = processor.topics
    console.print(f"features: {t.ticks} → {t.bars}, {t.features} as {processor.sink.transactional_id} "
                  f"(intervals {', '.join(processor.engine.config.intervals)})")
    try:
        processor.run(should_stop, stop_when_idle_s=stop_when_idle)
    finally:
        processor.close()


@features_app.command("compute")
def features_compute(
    ctx: typer.Context,
    input_path: Annotated[Path, typer.Option("--input", help="bars or ticks, CSV or Parquet")],
    output_path: Annotated[Path, typer.Option("--output", help="CSV or Parquet")],
) -> None:
    """Compute the feature set over a file of bars (or ticks, which are first made into bars)."""
    settings = _settings(ctx)
    engine = _engine(settings)
    table = read_table(input_path)
    names = set(table.column_names)
    if set(BAR_COLUMNS) <= names:
        result = _from_bars(engine, table)
    elif set(TICK_COLUMNS) <= names:
        result = _from_ticks(engine, table)
    else:
        raise UserError(f"{input_path} needs bar columns {list(BAR_COLUMNS)} or tick columns {list(TICK_COLUMNS)}")
    write_table(result, output_path)
    console.print(f"wrote {result.num_rows:,} rows × {len(engine.feature_set.names)} features to {output_path}")


def _from_bars(engine: FeatureEngine, table: pa.Table) -> pa.Table:
    feature_set = engine.feature_set
    table = table.sort_by([("symbol", "ascending"), ("ts", "ascending")])
    col = {n: table.column(n).to_numpy(zero_copy_only=False) for n in BAR_COLUMNS}
    high, low, close, volume = (col[n].astype(np.float64) for n in ("high", "low", "close", "volume"))
    values = features_for_bars(feature_set, col["symbol"], high, low, close, volume, backend=engine.backend)
    for name in feature_set.names:
        table = table.append_column(name, pa.array(values[name], mask=np.isnan(values[name])))
    return table


def _from_ticks(engine: FeatureEngine, table: pa.Table) -> pa.Table:

    rows = table.select(list(TICK_COLUMNS)).to_pylist()
    ticks = TickColumns.from_records([Tick(str(r["symbol"]), int(r["ts"]), float(r["price"]), float(r["size"]))
                                      for r in rows])
    out, _ = engine.process(engine.empty_state(), ticks)
    parts = []
    for c in out.closed:
        data = {"symbol": c.symbol.astype(str), "interval": [c.interval] * len(c), "ts": c.start, "open": c.open,
                "high": c.high, "low": c.low, "close": c.close, "volume": c.volume, "vwap": c.vwap,
                "trades": c.trades}
        t = pa.table(data)
        for name in engine.feature_set.names:
            t = t.append_column(name, pa.array(c.features[name], mask=np.isnan(c.features[name])))
        parts.append(t)
    return pa.concat_tables(parts).sort_by([("symbol", "ascending"), ("interval", "ascending"), ("ts", "ascending")])

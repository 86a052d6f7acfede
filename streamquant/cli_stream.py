"""`streamquant produce ticks` and `streamquant tail`: putting ticks on a topic and looking at topics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from processors.synthetic import MarketSpec, TickGenerator
from schemas.codec import RecordCodec
from schemas.errors import InvalidMessage
from schemas.records import RECORD_TYPES
from schemas.spec import to_dict
from schemas.ticks import TickColumns, decode_tick, encode_columns, tick_from_dict
from streamquant.errors import UserError
from streamquant.kafka_io import RawMessage, admin_client, follow_messages, newest_messages, topic_partitions
from streamquant.settings import Settings
from streamquant.tables import read_table
from streams.dlq import header_dict
from streams.sink import KafkaSink
from streams.topics import TopicCatalog

console = Console()
produce_app = typer.Typer(no_args_is_help=True, help="Write messages to topics.")

TICK_COLUMNS = ("symbol", "ts", "price", "size", "bid", "ask", "exchange")


def register(app: typer.Typer) -> None:
    app.add_typer(produce_app, name="produce")
    app.command("tail")(tail)


def _settings(ctx: typer.Context) -> Settings:
    root = ctx.find_root()
    settings: Settings = root.obj
    return settings


def _require_topic(settings: Settings, topic: str) -> int:
    admin = admin_client(settings.kafka)
    partitions = topic_partitions(admin, topic)
    if partitions is None:
        raise UserError(f"topic {topic} does not exist (create the catalog with `streamquant topics create`)")
    return len(partitions)


# ---------------------------------------------------------------------- produce ticks


@produce_app.command("ticks")
def produce_ticks(
    ctx: typer.Context,
    symbols: Annotated[int, typer.Option(min=1, max=100_000, help="number of synthetic symbols")] = 100,
    rate: Annotated[float, typer.Option(min=0, help="ticks per second (0: as fast as possible)")] = 10_000,
    seconds: Annotated[float | None, typer.Option(min=0, help="how long to produce")] = None,
    count: Annotated[int | None, typer.Option(min=1, help="how many ticks to produce")] = None,
    seed: Annotated[int, typer.Option(help="seed of the synthetic market")] = 1,
    wire: Annotated[str | None, typer.Option("--format", help="json or avro (default: ingest.wire_format)")] = None,
    from_file: Annotated[Path | None, typer.Option("--from-file", help="replay a CSV or Parquet file")] = None,
    topic: Annotated[str, typer.Option(help="logical topic")] = "ticks",
) -> None:
    """Produce seeded geometric-Brownian-motion ticks (or replay a file) with a live rate line."""
    settings = _settings(ctx)
    wire = wire or settings.ingest.wire_format
    if wire not in ("json", "avro"):
        raise UserError(f"--format must be json or avro, not {wire!r}")
    fmt: Literal["json", "avro"] = "json" if wire == "json" else "avro"
    if from_file is None and seconds is None and count is None:
        seconds = 10.0
    if rate == 0 and count is None and from_file is None:
        raise UserError("--rate 0 (unthrottled) needs --count")
    full_topic = TopicCatalog(settings.topics.catalog_options()).name(topic)
    replay = _read_tick_file(from_file) if from_file is not None else None
    _require_topic(settings, full_topic)

    sink = KafkaSink(settings.kafka)
    generator = None if replay is not None else TickGenerator(
        MarketSpec(symbols=symbols, seed=seed, rate=rate or 10_000.0, start_ms=int(time.time() * 1000)))
    total = len(replay) if replay is not None else count
    sent = 0
    started = time.monotonic()

    def line() -> str:
        elapsed = max(time.monotonic() - started, 1e-9)
        of = f"/{total:,}" if total is not None else ""
        return f"[bold]{full_topic}[/]  sent {sent:,}{of} ticks  {sent / elapsed:,.0f} ticks/s  {elapsed:,.1f}s"

    with _RateLine(line) as rate_line:
        while True:
            elapsed = time.monotonic() - started
            if seconds is not None and elapsed >= seconds:
                break
            if total is not None and sent >= total:
                break
            due = 50_000 if rate == 0 else int(rate * elapsed) - sent
            if total is not None:
                due = min(due, total - sent)
            if due <= 0:
                sink.poll()
                time.sleep(0.005)
                continue
            due = min(due, 50_000)
            chunk = replay.slice(sent, due) if replay is not None else generator.next_chunk(due)  # type: ignore[union-attr]
            values = encode_columns(chunk, fmt)
            keys = [s.encode() for s in chunk.symbol()]
            sink.write_many(full_topic, keys, values)
            sent += len(values)
            rate_line.update()
        sink.flush()
    console.print(line() + "  [green]all delivered[/]")


class _RateLine:
    """A live status line on a terminal; a line every few seconds in a log or a pipe."""

    def __init__(self, render: Any, every_s: float = 5.0) -> None:
        self._render = render
        self._every_s = every_s
        self._live: Live | None = None
        self._last = time.monotonic()

    def __enter__(self) -> _RateLine:
        if console.is_terminal:
            self._live = Live(self._render(), console=console, refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def update(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
        elif time.monotonic() - self._last >= self._every_s:
            self._last = time.monotonic()
            console.print(self._render())

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)


def _read_tick_file(path: Path) -> _Replay:
    table = read_table(path)
    missing = [c for c in TICK_COLUMNS[:4] if c not in table.column_names]
    if missing:
        raise UserError(f"{path} lacks column(s) {missing}; ticks need {list(TICK_COLUMNS[:4])}")
    extra = [c for c in table.column_names if c not in TICK_COLUMNS]
    if extra:
        raise UserError(f"{path} has unknown column(s) {extra}; allowed: {list(TICK_COLUMNS)}")
    rows = table.to_pylist()
    ticks = []
    for i, row in enumerate(rows, start=1):
        clean = {k: v for k, v in row.items() if v is not None and not (isinstance(v, float) and v != v
                                                                         and k in ("bid", "ask"))}
        try:
            ticks.append(tick_from_dict(clean))
        except InvalidMessage as err:
            raise UserError(f"{path} row {i}: {err.reason}; nothing was produced") from None
    return _Replay(TickColumns.from_records(ticks))


class _Replay:
    """A file's ticks, handed out in slices."""

    def __init__(self, columns: TickColumns) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns)

    def slice(self, start: int, count: int) -> TickColumns:
        c = self.columns
        sl = slice(start, start + count)
        return TickColumns(c.symbol_codes[sl], c.symbols, c.ts[sl], c.price[sl], c.size[sl], c.bid[sl],
                           c.ask[sl], c.exchange_codes[sl], c.exchanges)


# ---------------------------------------------------------------------- tail


def tail(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(help="logical topic name (ticks, bars, ticks.dlq, ...)")],
    n: Annotated[int, typer.Option("--n", "-n", min=1, max=100_000, help="how many of the newest")] = 20,
    raw: Annotated[bool, typer.Option(help="print values as received")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="then keep printing new messages")] = False,
    seconds: Annotated[float | None, typer.Option(help="with --follow: stop after this long")] = None,
) -> None:
    """Print the newest messages of a topic, decoded (dead letters with their reason headers)."""
    settings = _settings(ctx)
    catalog = TopicCatalog(settings.topics.catalog_options())
    full = catalog.name(topic)
    admin = admin_client(settings.kafka)
    partitions = topic_partitions(admin, full)
    if partitions is None:
        raise UserError(f"topic {full} does not exist (create the catalog with `streamquant topics create`)")
    spec = catalog.spec(topic)
    render = _renderer(spec.record, raw, settings.ingest.max_tick_bytes)
    messages, ends = newest_messages(settings.kafka, full, partitions, n)
    if not messages and not follow:
        console.print(f"[dim]{full} is empty[/]")
        return
    for m in messages:
        _print_message(m, render)
    if follow:
        try:
            for m in follow_messages(settings.kafka, full, ends, seconds):
                _print_message(m, render)
        except KeyboardInterrupt:
            pass


def _print_message(m: RawMessage, render: Any) -> None:
    key = (m.key or b"").decode("utf-8", "replace")
    console.print(f"[dim]{m.partition}:{m.offset}[/] [cyan]{escape(key)}[/] {escape(render(m.value, m.headers))}",
                  highlight=False, soft_wrap=True)


def _renderer(record: str, raw: bool, max_tick_bytes: int) -> Any:
    def as_text(value: bytes | None) -> str:
        return "(null)" if value is None else value.decode("utf-8", "replace")

    if raw:
        return lambda value, _headers: as_text(value)
    if record == "Tick":
        def tick(value: bytes | None, _headers: Any) -> str:
            try:
                return orjson.dumps(to_dict(decode_tick(value, max_tick_bytes))).decode()
            except InvalidMessage as err:
                return f"<undecodable: {err.error_class}: {err.reason}>"
        return tick
    if record == "dead_letter":
        def letter(value: bytes | None, headers: Any) -> str:
            h = header_dict(headers)
            return (f"{as_text(value)!r}  <- {h.get('sq.error.class', '?')}: {h.get('sq.error.reason', '')}"
                    f" (from {h.get('sq.source.topic', '?')}:{h.get('sq.source.partition', '?')}:"
                    f"{h.get('sq.source.offset', '?')})")
        return letter
    if record in RECORD_TYPES:
        codec: RecordCodec[Any] = RecordCodec(RECORD_TYPES[record])

        def rec(value: bytes | None, _headers: Any) -> str:
            try:
                return orjson.dumps(to_dict(codec.decode(value))).decode()  # type: ignore[arg-type]
            except InvalidMessage as err:
                return f"<undecodable: {err.error_class}: {err.reason}>"
        return rec
    return lambda value, _headers: as_text(value)



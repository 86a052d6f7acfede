"""The tick codec: a batch of message values straight into columns (NumPy arrays per field).

This is the hot path of every processor. JSON batches are parsed by Arrow's JSON reader in one call
and validated with vectorized checks; `decode_tick` is the plain per-message reference that the fast
path must agree with (a property test holds them together). A bad message never costs the batch: a
chunk that Arrow refuses is split in halves until the bad messages are isolated, and those go through
the reference decoder, which says why they are bad.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from schemas.codec import _AVRO_CORRUPT, Reject, by_schema_id_or_reject
from schemas.errors import InvalidMessage
from schemas.records import SYMBOL_PATTERN, TS_MAX_MS, TS_MIN_MS, Tick
from schemas.registry import load_avro_schema, schema_id
from schemas.wire import WireFormat, frame_avro, unframe_avro

DEFAULT_MAX_TICK_BYTES = 4096
EXCHANGE_MAX = 16
_REQUIRED = ("symbol", "ts", "price", "size")
_OPTIONAL = ("bid", "ask", "exchange")
_FIELDS = frozenset(_REQUIRED + _OPTIONAL)
_SYMBOL_RE = re.compile(SYMBOL_PATTERN)
_ARROW_SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("ts", pa.int64()),
        ("price", pa.float64()),
        ("size", pa.float64()),
        ("bid", pa.float64()),
        ("ask", pa.float64()),
        ("exchange", pa.string()),
    ]
)
# Below this many messages a refused chunk is decoded one by one instead of split further.
_SPLIT_FLOOR = 16


@dataclass(frozen=True, slots=True)
class TickColumns:
    """Ticks as columns. Symbols (and exchanges) are dictionary-encoded: codes index the tuple."""

    symbol_codes: np.ndarray  # int32
    symbols: tuple[str, ...]
    ts: np.ndarray  # int64, epoch ms
    price: np.ndarray  # float64
    size: np.ndarray  # float64
    bid: np.ndarray  # float64, NaN where absent
    ask: np.ndarray  # float64, NaN where absent
    exchange_codes: np.ndarray  # int32, -1 where absent
    exchanges: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ts)

    def symbol(self) -> np.ndarray:
        """The symbol of every row as an object array."""
        return np.asarray(self.symbols, dtype=object)[self.symbol_codes] if len(self) else np.empty(0, object)

    def to_records(self) -> list[Tick]:
        out = []
        for i in range(len(self)):
            ex = int(self.exchange_codes[i])
            out.append(
                Tick(
                    symbol=self.symbols[self.symbol_codes[i]],
                    ts=int(self.ts[i]),
                    price=float(self.price[i]),
                    size=float(self.size[i]),
                    bid=None if math.isnan(self.bid[i]) else float(self.bid[i]),
                    ask=None if math.isnan(self.ask[i]) else float(self.ask[i]),
                    exchange=None if ex < 0 else self.exchanges[ex],
                )
            )
        return out

    @classmethod
    def from_records(cls, ticks: Sequence[Tick]) -> TickColumns:
        return _columns_from_table(pa.Table.from_pylist([_tick_dict(t) for t in ticks], schema=_ARROW_SCHEMA))

    @classmethod
    def empty(cls) -> TickColumns:
        return _columns_from_table(_ARROW_SCHEMA.empty_table())


@dataclass(frozen=True, slots=True)
class DecodedTicks:
    """A decoded batch: good ticks in input order, the input index of each, and the rejects."""

    ticks: TickColumns
    indices: np.ndarray  # int64 index into the input batch, one per good tick
    rejects: list[Reject]


# ---------------------------------------------------------------------- reference decoder


def decode_tick(data: bytes | None, max_bytes: int = DEFAULT_MAX_TICK_BYTES) -> Tick:
    """One message to a valid Tick, or `InvalidMessage`: the reference the fast path must match."""
    if data is None:
        raise InvalidMessage("empty", "message has no value (tombstone)")
    if len(data) > max_bytes:
        raise InvalidMessage("too_large", f"{len(data)} bytes exceeds the limit of {max_bytes}")
    if data[:1] == b"\x00":
        obj = _read_avro_tick(data)
    else:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise InvalidMessage("not_json", f"not valid JSON: {err}") from None
    return tick_from_dict(obj)


def tick_from_dict(obj: Any) -> Tick:
    """Validates a decoded tick object field by field."""
    if not isinstance(obj, dict):
        raise InvalidMessage("not_object", f"expected a JSON object, got {type(obj).__name__}")
    extra = obj.keys() - _FIELDS
    if extra:
        raise InvalidMessage("unknown_field", f"unknown field(s) {sorted(extra)}")
    for name in _REQUIRED:
        if obj.get(name) is None:
            raise InvalidMessage("missing_field", f"{name} is required")
    symbol, ts = obj["symbol"], obj["ts"]
    if not isinstance(symbol, str):
        raise InvalidMessage("wrong_type", f"symbol must be a string, got {type(symbol).__name__}")
    if not _SYMBOL_RE.fullmatch(symbol):
        raise InvalidMessage("invalid_symbol", f"symbol {symbol[:40]!r} must be 1-32 of A-Z a-z 0-9 . _ : / = ^ -")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise InvalidMessage("wrong_type", f"ts must be an integer of epoch ms, got {type(ts).__name__}")
    if not TS_MIN_MS <= ts <= TS_MAX_MS:
        raise InvalidMessage("out_of_range", f"ts {ts} is not epoch milliseconds between 2000 and 2100")
    price = _number(obj, "price")
    size = _number(obj, "size")
    if price <= 0:
        raise InvalidMessage("out_of_range", f"price {price} must be positive")
    if size < 0:
        raise InvalidMessage("out_of_range", f"size {size} must not be negative")
    bid = _optional_price(obj, "bid")
    ask = _optional_price(obj, "ask")
    exchange = obj.get("exchange")
    if exchange is not None:
        if not isinstance(exchange, str):
            raise InvalidMessage("wrong_type", f"exchange must be a string, got {type(exchange).__name__}")
        if not 1 <= len(exchange) <= EXCHANGE_MAX:
            raise InvalidMessage("invalid_value", f"exchange must be 1-{EXCHANGE_MAX} characters")
    return Tick(symbol=symbol, ts=ts, price=price, size=size, bid=bid, ask=ask, exchange=exchange)


def _number(obj: dict[str, Any], name: str) -> float:
    value = obj[name]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidMessage("wrong_type", f"{name} must be a number, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError:
        raise InvalidMessage("out_of_range", f"{name} does not fit a double") from None
    if not math.isfinite(out):
        raise InvalidMessage("non_finite", f"{name} is {out}")
    return out


def _optional_price(obj: dict[str, Any], name: str) -> float | None:
    if obj.get(name) is None:
        return None
    value = _number(obj, name)
    if value <= 0:
        raise InvalidMessage("out_of_range", f"{name} {value} must be positive")
    return value


_AVRO_TICK = fastavro.parse_schema(load_avro_schema("Tick", 1))
_TICK_SCHEMA_ID = schema_id("Tick", 1)


def _read_avro_tick(data: bytes) -> Any:
    sid, payload = unframe_avro(data)
    name, _ = by_schema_id_or_reject(sid)
    if sid != _TICK_SCHEMA_ID:
        raise InvalidMessage("unknown_schema", f"schema id {sid} is {name}, not Tick")
    buf = io.BytesIO(payload)
    try:
        obj = fastavro.schemaless_reader(buf, _AVRO_TICK, None)
    except _AVRO_CORRUPT as err:
        raise InvalidMessage("bad_avro", f"cannot decode Avro payload: {type(err).__name__}") from None
    if buf.tell() != len(payload):
        raise InvalidMessage("bad_avro", f"{len(payload) - buf.tell()} trailing bytes after the record")
    return obj


# ---------------------------------------------------------------------- encoder


def _tick_dict(t: Tick) -> dict[str, Any]:
    d: dict[str, Any] = {"symbol": t.symbol, "ts": t.ts, "price": t.price, "size": t.size}
    if t.bid is not None:
        d["bid"] = t.bid
    if t.ask is not None:
        d["ask"] = t.ask
    if t.exchange is not None:
        d["exchange"] = t.exchange
    return d


def encode_tick(t: Tick, wire: WireFormat = "json") -> bytes:
    d = _tick_dict(t)
    if wire == "json":
        return orjson.dumps(d)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, _AVRO_TICK, {**dict.fromkeys(_OPTIONAL), **d})
    return frame_avro(_TICK_SCHEMA_ID, buf.getvalue())


def encode_columns(cols: TickColumns, wire: WireFormat = "json") -> list[bytes]:
    """Every row of a column batch as one message value."""
    if wire == "avro":
        return [encode_tick(t, "avro") for t in cols.to_records()]
    syms = cols.symbols
    exch = cols.exchanges
    dumps = orjson.dumps
    out = []
    for code, ts, price, size, bid, ask, ex in zip(
        cols.symbol_codes.tolist(),
        cols.ts.tolist(),
        cols.price.tolist(),
        cols.size.tolist(),
        cols.bid.tolist(),
        cols.ask.tolist(),
        cols.exchange_codes.tolist(),
        strict=True,
    ):
        d: dict[str, Any] = {"symbol": syms[code], "ts": ts, "price": price, "size": size}
        if bid == bid:  # not NaN
            d["bid"] = bid
        if ask == ask:
            d["ask"] = ask
        if ex >= 0:
            d["exchange"] = exch[ex]
        out.append(dumps(d))
    return out


# ---------------------------------------------------------------------- batch decoder


class TickDecoder:
    """Decodes batches of tick messages (JSON or Confluent-framed Avro, mixed) into `DecodedTicks`."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_TICK_BYTES) -> None:
        self.max_bytes = max_bytes
        self._parse_options = pj.ParseOptions(explicit_schema=_ARROW_SCHEMA, unexpected_field_behavior="error")

    def decode(self, values: Sequence[bytes | None]) -> DecodedTicks:
        n = len(values)
        tables: list[pa.Table] = []
        table_indices: list[np.ndarray] = []
        rejects: list[Reject] = []
        slow_records: list[Tick] = []
        slow_indices: list[int] = []

        fast: list[int] = []
        limit = self.max_bytes
        for i, v in enumerate(values):
            # Only plain objects go to Arrow: its reader crashes on a top-level `null` row (pyarrow 26),
            # and Avro frames, blanks and odd shapes are rare enough for the reference decoder.
            if v is not None and 1 < len(v) <= limit and v[0] == 123 and v[-1] == 125:  # '{' ... '}'
                fast.append(i)
            else:
                self._slow(values, i, slow_records, slow_indices, rejects)

        if fast:
            fast_values = values if len(fast) == n else [values[i] for i in fast]
            self._fast(fast_values, np.asarray(fast, dtype=np.int64), tables, table_indices, rejects, values,
                       slow_records, slow_indices)

        if slow_records:
            tables.append(pa.Table.from_pylist([_tick_dict(t) for t in slow_records], schema=_ARROW_SCHEMA))
            table_indices.append(np.asarray(slow_indices, dtype=np.int64))
        if not tables:
            return DecodedTicks(TickColumns.empty(), np.empty(0, np.int64), _sorted(rejects))
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        indices = np.concatenate(table_indices) if len(table_indices) > 1 else table_indices[0]
        if len(indices) > 1 and bool(np.any(np.diff(indices) < 0)):
            order = np.argsort(indices, kind="stable")
            table = table.take(pa.array(order))
            indices = indices[order]
        return DecodedTicks(_columns_from_table(table), indices, _sorted(rejects))

    # -- internals

    def _slow(
        self,
        values: Sequence[bytes | None],
        i: int,
        records: list[Tick],
        indices: list[int],
        rejects: list[Reject],
    ) -> None:
        try:
            records.append(decode_tick(values[i], self.max_bytes))
            indices.append(i)
        except InvalidMessage as err:
            rejects.append(Reject(i, err.error_class, err.reason))

    def _fast(
        self,
        chunk: Sequence[bytes | None],
        idx: np.ndarray,
        tables: list[pa.Table],
        table_indices: list[np.ndarray],
        rejects: list[Reject],
        values: Sequence[bytes | None],
        slow_records: list[Tick],
        slow_indices: list[int],
    ) -> None:
        table = self._parse(chunk)
        if table is None:
            if len(chunk) <= _SPLIT_FLOOR:
                for i in idx.tolist():
                    self._slow(values, i, slow_records, slow_indices, rejects)
                return
            mid = len(chunk) // 2
            self._fast(chunk[:mid], idx[:mid], tables, table_indices, rejects, values, slow_records, slow_indices)
            self._fast(chunk[mid:], idx[mid:], tables, table_indices, rejects, values, slow_records, slow_indices)
            return
        ok = _valid_rows(table)
        if ok.all():
            tables.append(table)
            table_indices.append(idx)
            return
        # The reference decoder names the reason; rare, so per message is fine.
        for i in idx[~ok].tolist():
            self._slow(values, i, slow_records, slow_indices, rejects)
        tables.append(table.filter(pa.array(ok)))
        table_indices.append(idx[ok])

    def _parse(self, chunk: Sequence[bytes | None]) -> pa.Table | None:
        joined = b"\n".join(chunk)  # type: ignore[arg-type]
        # A message holding a newline would be read as several rows (or none): leave it to the reference.
        if joined.count(b"\n") != len(chunk) - 1:
            return None
        try:
            # One block for the whole chunk: a single parse on the calling thread.
            options = pj.ReadOptions(use_threads=False, block_size=len(joined) + 1)
            table = pj.read_json(io.BytesIO(joined), read_options=options, parse_options=self._parse_options)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if table.num_rows != len(chunk):  # blank messages are skipped by the reader
            return None
        return table


def _valid_rows(t: pa.Table) -> np.ndarray:
    """Vectorized twin of `tick_from_dict` over a parsed table: True where the row is valid."""

    def mask(expr: pa.ChunkedArray | pa.Array) -> np.ndarray:
        return np.asarray(pc.fill_null(expr, False).to_numpy(zero_copy_only=False), dtype=bool)

    price = t.column("price")
    size = t.column("size")
    ok = mask(pc.match_substring_regex(t.column("symbol"), SYMBOL_PATTERN))
    ok &= mask(pc.and_(pc.greater_equal(t.column("ts"), TS_MIN_MS), pc.less_equal(t.column("ts"), TS_MAX_MS)))
    ok &= mask(pc.and_(pc.is_finite(price), pc.greater(price, 0.0)))
    ok &= mask(pc.and_(pc.is_finite(size), pc.greater_equal(size, 0.0)))
    for name in ("bid", "ask"):
        col = t.column(name)
        if col.null_count != len(col):
            ok &= mask(pc.or_kleene(pc.is_null(col), pc.and_(pc.is_finite(col), pc.greater(col, 0.0))))
    ex = t.column("exchange")
    if ex.null_count != len(ex):
        length = pc.utf8_length(ex)
        ok &= mask(pc.or_kleene(pc.is_null(ex), pc.and_(pc.greater_equal(length, 1),
                                                        pc.less_equal(length, EXCHANGE_MAX))))
    return ok


def _columns_from_table(t: pa.Table) -> TickColumns:
    t = t.combine_chunks()
    sym = pc.dictionary_encode(t.column("symbol")).combine_chunks()
    ex = pc.dictionary_encode(t.column("exchange")).combine_chunks()
    ex_codes = ex.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)

    def floats(name: str) -> np.ndarray:
        return np.asarray(t.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    return TickColumns(
        symbol_codes=sym.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False),
        symbols=tuple(sym.dictionary.to_pylist()),
        ts=np.asarray(t.column("ts").to_numpy(zero_copy_only=False), dtype=np.int64),
        price=floats("price"),
        size=floats("size"),
        bid=floats("bid"),
        ask=floats("ask"),
        exchange_codes=ex_codes,
        exchanges=tuple(ex.dictionary.to_pylist()),
    )


def _sorted(rejects: list[Reject]) -> list[Reject]:
    return sorted(rejects, key=lambda r: r.index)

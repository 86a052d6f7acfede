"""Ticks as columns, the per-message reference decoder and the encoders.

`decode_tick` is the plain, obvious decoder of one message: the batch decoder in
`schemas.tick_decoder` must agree with it on every input (a property test holds them together), and
it names the reason for every message the batch decoder refuses.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
import msgspec
import numpy as np
import orjson

from schemas.codec import Reject, read_avro
from schemas.errors import InvalidMessage
from schemas.records import SYMBOL_PATTERN, TS_MAX_MS, TS_MIN_MS, Tick
from schemas.registry import load_avro_schema, schema_id
from schemas.wire import WireFormat, frame_avro

DEFAULT_MAX_TICK_BYTES = 4096
EXCHANGE_MAX = 16
_REQUIRED = ("symbol", "ts", "price", "size")
_OPTIONAL = ("bid", "ask", "exchange")
_FIELDS = frozenset(_REQUIRED + _OPTIONAL)
SYMBOL_RE = re.compile(SYMBOL_PATTERN)


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

    def take(self, rows: np.ndarray) -> TickColumns:
        """The given rows (indices or a boolean mask); dictionaries keep only the values still used."""
        sym_codes, symbols = _compact(self.symbol_codes[rows], self.symbols)
        ex_codes, exchanges = _compact(self.exchange_codes[rows], self.exchanges)
        return TickColumns(sym_codes, symbols, self.ts[rows], self.price[rows], self.size[rows], self.bid[rows],
                           self.ask[rows], ex_codes, exchanges)

    @classmethod
    def from_records(cls, ticks: Sequence[Tick]) -> TickColumns:
        n = len(ticks)
        nan = math.nan
        sym_codes, symbols = encode_dictionary([t.symbol for t in ticks])
        ex_codes, exchanges = encode_dictionary([t.exchange for t in ticks])
        return TickColumns(
            symbol_codes=sym_codes,
            symbols=symbols,
            ts=np.fromiter((t.ts for t in ticks), np.int64, n),
            price=np.fromiter((t.price for t in ticks), np.float64, n),
            size=np.fromiter((t.size for t in ticks), np.float64, n),
            bid=np.fromiter((nan if t.bid is None else t.bid for t in ticks), np.float64, n),
            ask=np.fromiter((nan if t.ask is None else t.ask for t in ticks), np.float64, n),
            exchange_codes=ex_codes,
            exchanges=exchanges,
        )

    @classmethod
    def concat(cls, parts: Sequence[TickColumns]) -> TickColumns:
        """Rows of several batches in order, with their dictionaries merged."""
        if len(parts) == 1:
            return parts[0]
        symbols: dict[str, int] = {}
        exchanges: dict[str, int] = {}
        sym_codes, ex_codes = [], []
        for p in parts:
            remap = np.array([symbols.setdefault(s, len(symbols)) for s in p.symbols] or [0], np.int32)
            sym_codes.append(remap[p.symbol_codes])
            ex_map = np.array([exchanges.setdefault(e, len(exchanges)) for e in p.exchanges] + [-1], np.int32)
            ex_codes.append(ex_map[p.exchange_codes])  # -1 picks the trailing -1
        return TickColumns(
            symbol_codes=np.concatenate(sym_codes),
            symbols=tuple(symbols),
            ts=np.concatenate([p.ts for p in parts]),
            price=np.concatenate([p.price for p in parts]),
            size=np.concatenate([p.size for p in parts]),
            bid=np.concatenate([p.bid for p in parts]),
            ask=np.concatenate([p.ask for p in parts]),
            exchange_codes=np.concatenate(ex_codes),
            exchanges=tuple(exchanges),
        )

    @classmethod
    def empty(cls) -> TickColumns:
        return cls.from_records([])


def encode_dictionary(values: Sequence[str | None]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Codes (-1 for None) and the distinct values in order of first appearance."""
    distinct = [v for v in dict.fromkeys(values) if v is not None]
    lookup: dict[str | None, int] = {v: i for i, v in enumerate(distinct)}
    lookup[None] = -1
    return np.fromiter(map(lookup.__getitem__, values), np.int32, len(values)), tuple(distinct)


def _compact(codes: np.ndarray, dictionary: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    used = np.unique(codes[codes >= 0])
    if len(used) == len(dictionary):
        return codes, dictionary
    remap = np.full(len(dictionary) + 1, -1, np.int32)  # the extra slot maps -1 to -1
    remap[used] = np.arange(len(used), dtype=np.int32)
    return remap[codes], tuple(dictionary[i] for i in used)


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
            obj = msgspec.json.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as err:  # msgspec raises the latter for non-UTF-8
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
    if not SYMBOL_RE.fullmatch(symbol):
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
    return read_avro(data, _AVRO_TICK, "Tick", 1)


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

"""The batch tick decoder: a batch of message values straight into columns (NumPy arrays per field).

This is the hot path of every processor. The JSON messages of a batch are parsed in one call (msgspec,
into typed structs that it does not track for garbage collection), turned into columns and validated
with vectorized checks. A bad message never costs the batch: a chunk the parser refuses is split in
halves until the bad messages are isolated, and those (with any row the checks flag) go through the
reference decoder `schemas.ticks.decode_tick`, which names the reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from operator import attrgetter
from typing import Annotated

import msgspec
import numpy as np

from schemas.codec import Reject
from schemas.errors import InvalidMessage
from schemas.records import TS_MAX_MS, TS_MIN_MS, Tick
from schemas.ticks import (
    DEFAULT_MAX_TICK_BYTES,
    EXCHANGE_MAX,
    SYMBOL_RE,
    DecodedTicks,
    TickColumns,
    decode_tick,
    encode_dictionary,
)

# Below this many messages a refused chunk is decoded one by one instead of split further.
_SPLIT_FLOOR = 16


class _WireTick(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """The JSON shape of a tick. Only the type checks live here; values are checked on columns."""

    symbol: str
    ts: Annotated[int, msgspec.Meta(ge=TS_MIN_MS, le=TS_MAX_MS)]  # also keeps it inside int64
    price: float
    size: float
    bid: float | None = None
    ask: float | None = None
    exchange: str | None = None


_ARRAY = msgspec.json.Decoder(list[_WireTick])
_GET = {name: attrgetter(name) for name in _WireTick.__struct_fields__}


class TickDecoder:
    """Decodes batches of tick messages (JSON or Confluent-framed Avro, mixed) into `DecodedTicks`."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_TICK_BYTES) -> None:
        self.max_bytes = max_bytes

    def decode(self, values: Sequence[bytes | None]) -> DecodedTicks:
        parts: list[TickColumns] = []
        part_indices: list[np.ndarray] = []
        rejects: list[Reject] = []
        slow: list[int] = []

        limit = self.max_bytes
        if None not in values and all(0 < len(v) <= limit and v[0] == 123 for v in values):  # type: ignore[arg-type,index]
            fast_values: Sequence[bytes] = values  # type: ignore[assignment]
            fast_idx = np.arange(len(values), dtype=np.int64)
        else:
            # Only JSON objects go to the batch parser; Avro frames, blanks and odd shapes are rare.
            keep = [i for i, v in enumerate(values) if v is not None and 0 < len(v) <= limit and v[0] == 123]
            kept = set(keep)
            slow += [i for i in range(len(values)) if i not in kept]
            fast_values = [values[i] for i in keep]  # type: ignore[misc]
            fast_idx = np.asarray(keep, dtype=np.int64)
        if len(fast_values):
            self._fast(fast_values, fast_idx, parts, part_indices, slow)

        if slow:
            good: list[Tick] = []
            good_idx: list[int] = []
            for i in sorted(slow):
                try:
                    good.append(decode_tick(values[i], limit))
                    good_idx.append(i)
                except InvalidMessage as err:
                    rejects.append(Reject(i, err.error_class, err.reason))
            if good:
                parts.append(TickColumns.from_records(good))
                part_indices.append(np.asarray(good_idx, dtype=np.int64))
        if not parts:
            return DecodedTicks(TickColumns.empty(), np.empty(0, np.int64), rejects)
        columns = TickColumns.concat(parts)
        indices = np.concatenate(part_indices) if len(part_indices) > 1 else part_indices[0]
        if len(indices) > 1 and bool(np.any(np.diff(indices) < 0)):
            order = np.argsort(indices, kind="stable")
            columns, indices = columns.take(order), indices[order]
        return DecodedTicks(columns, indices, rejects)

    def _fast(self, chunk: Sequence[bytes], idx: np.ndarray, parts: list[TickColumns],
              part_indices: list[np.ndarray], slow: list[int]) -> None:
        """Parses the messages; on a failure, sets aside the message the parser blamed and goes on after it."""
        joined = _Joined(chunk)
        self._span(joined, 0, len(chunk), idx, parts, part_indices, slow)

    def _span(self, joined: _Joined, lo: int, hi: int, idx: np.ndarray, parts: list[TickColumns],
              part_indices: list[np.ndarray], slow: list[int]) -> None:
        start = lo
        while start < hi:
            rows, blamed = joined.parse(start, hi)
            if rows is not None:
                if self._keep(rows, idx[start:hi], parts, part_indices, slow):
                    return
                blamed = None
            if blamed is None:  # the parser could not say where (or the rows may be misaligned): halve
                if hi - start <= _SPLIT_FLOOR:
                    slow += idx[start:hi].tolist()
                    return
                mid = (start + hi) // 2
                self._span(joined, start, mid, idx, parts, part_indices, slow)
                self._span(joined, mid, hi, idx, parts, part_indices, slow)
                return
            if blamed > start:
                self._span(joined, start, blamed, idx, parts, part_indices, slow)
            slow.append(int(idx[blamed]))
            start = blamed + 1

    @staticmethod
    def _keep(rows: list[_WireTick], idx: np.ndarray, parts: list[TickColumns], part_indices: list[np.ndarray],
              slow: list[int]) -> bool:
        """Keeps the rows of a parsed run; False when row i might not be message i (see `_Joined`)."""
        columns, ok = _columns(rows)
        if any("," in v for v in columns.symbols) or any("," in v for v in columns.exchanges):
            return False
        if ok is None:
            parts.append(columns)
            part_indices.append(idx)
            return True
        # Flagged rows get their reason from the reference decoder; rare, so per message is fine.
        slow += idx[~ok].tolist()
        if ok.any():
            parts.append(columns.take(ok))
            part_indices.append(idx[ok])
        return True


_AT_ELEMENT = re.compile(r"at `\$\[(\d+)\]")
_AT_BYTE = re.compile(r"\(byte (\d+)\)")


class _Joined:
    """The messages of a chunk joined once by commas; any run of them parses as one JSON array.

    Row i is message i when the row count matches, provided no string runs from one message into the
    next (a message `{..},{..` plus one holding `","...}` would otherwise trade places). A string that
    crosses a message boundary contains the comma between them; field names cannot (the struct knows only
    its own), numbers end at it, so only a `symbol` or `exchange` value could — and a run whose values hold
    a comma is not trusted: it is split until the reference decoder takes the messages one by one. When a
    parse fails, msgspec names the element (type errors) or the byte (syntax errors); the message holding
    it is blamed (perhaps an innocent neighbour: it then simply takes the reference path).
    """

    def __init__(self, chunk: Sequence[bytes]) -> None:
        self.buf = bytearray(b"[" + b",".join(chunk) + b"]")
        lengths = np.fromiter(map(len, chunk), np.int64, len(chunk))
        # Message i occupies buf[starts[i] : starts[i + 1] - 1]; the byte before it is "[" or a comma.
        self.starts = np.ones(len(chunk) + 1, np.int64)
        np.cumsum(lengths + 1, out=self.starts[1:])
        self.starts[1:] += 1

    def parse(self, lo: int, hi: int) -> tuple[list[_WireTick] | None, int | None]:
        """Rows of messages lo..hi-1, or None and the index of the blamed message (None: unknown)."""
        open_at, close_at = int(self.starts[lo]) - 1, int(self.starts[hi]) - 1
        buf = self.buf
        saved = buf[open_at], buf[close_at]
        # Turn the separators around the run into brackets and parse it in place: no copy.
        buf[open_at], buf[close_at] = 0x5B, 0x5D
        try:
            with memoryview(buf) as view:
                rows = _ARRAY.decode(view[open_at : close_at + 1])
        except msgspec.ValidationError as err:
            m = _AT_ELEMENT.search(str(err))
            return None, (lo + int(m.group(1)) if m and lo + int(m.group(1)) < hi else None)
        except msgspec.DecodeError as err:
            m = _AT_BYTE.search(str(err))
            if m is None:
                return None, None
            at = open_at + int(m.group(1))
            return None, min(max(int(np.searchsorted(self.starts, at, side="right")) - 1, lo), hi - 1)
        except UnicodeDecodeError:  # a string that is not UTF-8: msgspec raises this, not a DecodeError
            return None, None
        finally:
            buf[open_at], buf[close_at] = saved
        return (rows, None) if len(rows) == hi - lo else (None, None)


def _columns(rows: list[_WireTick]) -> tuple[TickColumns, np.ndarray | None]:
    """Columns of parsed rows and the mask of valid rows (None when all are valid: the common case)."""
    n = len(rows)
    ts = np.fromiter(map(_GET["ts"], rows), np.int64, n)
    price = np.fromiter(map(_GET["price"], rows), np.float64, n)
    size = np.fromiter(map(_GET["size"], rows), np.float64, n)
    bid = np.array(list(map(_GET["bid"], rows)), dtype=np.float64)  # None -> NaN
    ask = np.array(list(map(_GET["ask"], rows)), dtype=np.float64)
    sym_codes, symbols = encode_dictionary(list(map(_GET["symbol"], rows)))
    ex_codes, exchanges = encode_dictionary(list(map(_GET["exchange"], rows)))
    columns = TickColumns(sym_codes, symbols, ts, price, size, bid, ask, ex_codes, exchanges)

    with np.errstate(invalid="ignore"):
        ok = np.isfinite(price) & (price > 0) & np.isfinite(size) & (size >= 0)
        for quote in (bid, ask):
            ok &= np.isnan(quote) | (np.isfinite(quote) & (quote > 0))
    # Strings are checked once per distinct value, not per row.
    bad_symbols = [i for i, s in enumerate(symbols) if not SYMBOL_RE.fullmatch(s)]
    if bad_symbols:
        ok &= ~np.isin(sym_codes, bad_symbols)
    bad_exchanges = [i for i, e in enumerate(exchanges) if not 1 <= len(e) <= EXCHANGE_MAX]
    if bad_exchanges:
        ok &= ~np.isin(ex_codes, bad_exchanges)
    return columns, (None if ok.all() else ok)

"""Bars for backtests: an aligned (time × symbols) panel, and the loaders that build one from a command's data source.

Loaders are looked up by `DataSource.source` in `DATA_LOADERS`; `parquet` (a Parquet file or dataset
directory, or a CSV file, with `symbol, ts, open, high, low, close, volume`) and `synthetic` (a seeded
generator) live here, and the job plane registers `topic`. A loader raises `InvalidCommand` for what the
user can fix: an unreadable source, symbols that are not in it, a period without bars.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from processors.errors import InvalidCommand
from processors.features import interval_ms
from schemas.records import DataSource

DAY_MS = 86_400_000
TRADING_DAYS = 252
BAR_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")


class BarsRequest(Protocol):
    """What a loader needs to know: the backtest, features and training commands all carry it."""

    @property
    def universe(self) -> tuple[str, ...]: ...

    @property
    def start(self) -> str: ...

    @property
    def end(self) -> str: ...

    @property
    def interval(self) -> str: ...

    @property
    def data(self) -> DataSource: ...


@dataclass(frozen=True)
class BarPanel:
    """OHLCV of several symbols on one time axis; NaN where a symbol has no bar (halted, not yet listed...)."""

    ts: np.ndarray  # (T,) int64 epoch ms, UTC, strictly increasing
    open: np.ndarray  # (T, S) float64
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    symbols: tuple[str, ...]

    def __post_init__(self) -> None:
        shape = (len(self.ts), len(self.symbols))
        for name in ("open", "high", "low", "close", "volume"):
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"BarPanel.{name} must be shaped (bars, symbols) = {shape}")
        if len(self.ts) > 1 and not bool((np.diff(self.ts) > 0).all()):
            raise ValueError("BarPanel.ts must be strictly increasing")

    @property
    def tradable(self) -> np.ndarray:
        """(T, S) bars that can trade: open and close both positive numbers (NaN or 0 means halted/missing)."""
        with np.errstate(invalid="ignore"):
            return np.isfinite(self.open) & np.isfinite(self.close) & (self.open > 0) & (self.close > 0)

    @classmethod
    def from_rows(cls, symbol: Sequence[str] | np.ndarray, ts: np.ndarray, open_: np.ndarray, high: np.ndarray,
                  low: np.ndarray, close: np.ndarray, volume: np.ndarray, universe: Sequence[str]) -> BarPanel:
        """Long-format bars (one row per symbol and time, any order) to a panel with `universe`'s columns.

        Rows of other symbols are ignored; of repeated (symbol, ts) rows the last one wins.
        """
        sym = np.asarray(symbol, dtype=object)
        column = {s: i for i, s in enumerate(universe)}
        code = np.fromiter((column.get(s, -1) for s in sym), dtype=np.int64, count=len(sym))
        keep = code >= 0
        ts = np.asarray(ts, dtype=np.int64)[keep]
        code = code[keep]
        times, row = np.unique(ts, return_inverse=True)
        shape = (len(times), len(universe))
        fields = []
        for values in (open_, high, low, close, volume):
            out = np.full(shape, np.nan)
            out[row, code] = np.asarray(values, dtype=np.float64)[keep]  # later rows overwrite earlier ones
            fields.append(out)
        o, h, lo, c, v = fields
        return cls(times, o, h, lo, c, v, tuple(universe))


def period_ms(start: str, end: str) -> tuple[int, int]:
    """[start, end) in epoch ms; a date-only end includes that whole day; no offset means UTC."""
    lo, hi = _instant(start, "start"), _instant(end, "end")
    if len(end.strip()) == 10:
        hi += DAY_MS
    if lo >= hi:
        raise InvalidCommand(f"the period is empty: start {start} is not before end {end}")
    return lo, hi


def _instant(text: str, what: str) -> int:
    try:
        when = datetime.fromisoformat(text.strip().replace(" ", "T"))
    except ValueError:
        raise InvalidCommand(f"{what} {text!r} is not an ISO-8601 date or timestamp") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def periods_per_year(interval: str, ts: np.ndarray) -> float:
    """Bars per year for annualising: 252 trading days, times the bars per trading day of intraday data
    (measured: bars ÷ distinct UTC dates, so a 6.5-hour session and a 24-hour market both come out right)."""
    step = interval_ms(interval)
    if step >= DAY_MS or len(ts) == 0:
        return TRADING_DAYS * DAY_MS / step
    days = len(np.unique(np.asarray(ts, dtype=np.int64) // DAY_MS))
    return TRADING_DAYS * len(ts) / days


# ---------------------------------------------------------------------------------------------- parquet


def load_parquet(cmd: BarsRequest) -> BarPanel:
    path = cmd.data.path
    if not path:
        raise InvalidCommand("data source parquet needs a path")
    lo, hi = period_ms(cmd.start, cmd.end)
    table = _read_bars(path, cmd.universe, (lo, hi))
    symbols = np.asarray(table.column("symbol").to_pylist(), dtype=object)
    ts = _ts_ms(table.column("ts"))
    inside = (ts >= lo) & (ts < hi)
    present = set(symbols[inside].tolist())
    missing = [s for s in cmd.universe if s not in present]
    if missing:
        anywhere = set(_read_bars(path, missing, None).column("symbol").to_pylist())
        absent = [s for s in missing if s not in anywhere]
        if absent:
            raise InvalidCommand(f"symbols not in {path}: {', '.join(absent[:10])}"
                                 + (f" and {len(absent) - 10} more" if len(absent) > 10 else ""))
        raise InvalidCommand(f"no bars between {cmd.start} and {cmd.end} for: {', '.join(missing[:10])}")
    o, h, lo, c, v = (table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)[inside]
                      for c in ("open", "high", "low", "close", "volume"))
    return BarPanel.from_rows(symbols[inside], ts[inside], o, h, lo, c, v, cmd.universe)


def _read_bars(path: str, symbols: Sequence[str], period: tuple[int, int] | None) -> pa.Table:
    """The bar columns of `symbols` (and the period, where the format lets the reader skip the rest)."""
    try:
        if path.lower().endswith(".csv"):
            dataset = pads.dataset(pacsv.read_csv(path))
        else:
            dataset = pads.dataset(path, format="parquet")
        names = dataset.schema.names
        lacking = [c for c in BAR_COLUMNS if c not in names]
        if lacking:
            raise InvalidCommand(f"{path} lacks the columns {', '.join(lacking)} (bars need {', '.join(BAR_COLUMNS)})")
        wanted = pc.field("symbol").isin(pa.array(list(symbols), pa.string()))
        ts_type = dataset.schema.field("ts").type
        if period is not None and (pa.types.is_integer(ts_type) or pa.types.is_timestamp(ts_type)):
            bounds = [pa.scalar(v, pa.int64()) if pa.types.is_integer(ts_type)
                      else pa.scalar(v, pa.timestamp("ms", ts_type.tz)).cast(ts_type) for v in period]
            wanted = wanted & (pc.field("ts") >= bounds[0]) & (pc.field("ts") < bounds[1])
        return dataset.to_table(columns=list(BAR_COLUMNS), filter=wanted)
    except (OSError, pa.ArrowException, ValueError) as err:
        if isinstance(err, InvalidCommand):
            raise
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InvalidCommand(f"data source: cannot read bars from {path}: {reason}") from None


def _ts_ms(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    elif not pa.types.is_integer(column.type):
        raise InvalidCommand(f"bars column ts must be epoch milliseconds or a timestamp, not {column.type}")
    return column.to_numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------------- synthetic


def synthetic_times(start_ms: int, end_ms: int, step_ms: int) -> np.ndarray:
    """Bar times of the period: weekdays at midnight UTC for daily bars, a continuous grid intraday."""
    first = -(-start_ms // step_ms) * step_ms
    ts = np.arange(first, end_ms, step_ms, dtype=np.int64)
    if step_ms == DAY_MS:
        weekday = (ts // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday (3 with Monday = 0)
        ts = ts[weekday < 5]
    return ts


def load_synthetic(cmd: BarsRequest) -> BarPanel:
    """Seeded geometric Brownian motion bars with a few halted (NaN) bars and stretches per symbol.

    Each symbol's path depends only on the seed and its name, so adding a symbol changes no other one.
    """
    lo, hi = period_ms(cmd.start, cmd.end)
    step = interval_ms(cmd.interval)
    ts = synthetic_times(lo, hi, step)
    if len(ts) == 0:
        raise InvalidCommand(f"no {cmd.interval} bars between {cmd.start} and {cmd.end}")
    dt = step / DAY_MS / TRADING_DAYS  # in years of 252 trading days, as `periods_per_year` annualises
    seed = cmd.data.seed if cmd.data.seed is not None else 0
    fields = [np.empty((len(ts), len(cmd.universe))) for _ in range(5)]
    for j, symbol in enumerate(cmd.universe):
        bars = _gbm_bars(np.random.default_rng([seed, zlib.crc32(symbol.encode())]), len(ts), dt)
        for out, column in zip(fields, bars, strict=True):
            out[:, j] = column
    o, h, low, c, v = fields
    return BarPanel(ts, o, h, low, c, v, tuple(cmd.universe))


def _gbm_bars(rng: np.random.Generator, n: int, dt: float) -> tuple[np.ndarray, ...]:
    drift, sigma = rng.uniform(-0.05, 0.20), rng.uniform(0.15, 0.55)
    scale = sigma * np.sqrt(dt)
    close = rng.uniform(20, 400) * np.exp(np.cumsum((drift - sigma**2 / 2) * dt + scale * rng.standard_normal(n)))
    open_ = np.empty(n)
    open_[0] = close[0] * np.exp(scale * 0.3 * rng.standard_normal())
    open_[1:] = close[:-1] * np.exp(scale * 0.3 * rng.standard_normal(n - 1))
    wick = np.abs(rng.standard_normal((2, n))) * scale * 0.5
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = np.round(np.exp(rng.normal(12.0, 0.6, n)))
    halted = rng.random(n) < 0.003
    for _ in range(rng.poisson(n / 500)):  # a halt of a few bars now and then
        at = int(rng.integers(0, n))
        halted[at : at + int(rng.integers(2, 8))] = True
    out = [np.round(x, 2) for x in (open_, high, low, close)] + [volume]
    for x in out:
        x[halted] = np.nan
    return tuple(out)


Loader = Callable[[BarsRequest], BarPanel]
DATA_LOADERS: dict[str, Loader] = {"parquet": load_parquet, "synthetic": load_synthetic}


def check_request(cmd: BarsRequest) -> None:
    """What every job reading bars must get right before any data is read (InvalidCommand, one line)."""
    if not cmd.universe:
        raise InvalidCommand("the universe is empty")
    seen: set[str] = set()
    for symbol in cmd.universe:
        if symbol in seen:
            raise InvalidCommand(f"symbol {symbol} appears twice in the universe")
        seen.add(symbol)
    try:
        interval_ms(cmd.interval)
    except ValueError as err:
        raise InvalidCommand(str(err)) from None
    period_ms(cmd.start, cmd.end)
    if cmd.data.source not in DATA_LOADERS:
        raise InvalidCommand(f"data source {cmd.data.source!r} is not available here "
                             f"(available: {', '.join(sorted(DATA_LOADERS))})")
    if cmd.data.source == "parquet" and not cmd.data.path:
        raise InvalidCommand("data source parquet needs a path")


def estimated_bars(cmd: BarsRequest) -> int:
    """An upper bound on the bars per symbol of the command's period (no data access), for size limits."""
    lo, hi = period_ms(cmd.start, cmd.end)
    return max(1, -(-(hi - lo) // interval_ms(cmd.interval)))


def check_symbols(cmd: BarsRequest, panel: BarPanel) -> None:
    """Every symbol of the universe has at least one tradable bar in the period."""
    if panel.symbols != tuple(cmd.universe):
        raise ValueError("the loader returned other symbols than the universe")
    if len(panel.ts) == 0:
        raise InvalidCommand(f"no bars between {cmd.start} and {cmd.end}")
    has_bars = np.asarray(panel.tradable.any(axis=0)).tolist()
    empty = [s for s, any_bar in zip(panel.symbols, has_bars, strict=True) if not any_bar]
    if empty:
        raise InvalidCommand(f"no tradable bars between {cmd.start} and {cmd.end} for: {', '.join(empty[:10])}")

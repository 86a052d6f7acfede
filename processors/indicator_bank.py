"""What a strategy sees: each symbol's bars in time order, and indicators over them computed once per parameters.

Arrays are packed per symbol (symbols × bars, time on the last axis, `gpu_kernels.backtest.BarSequences`):
a halted bar is simply absent, so "the previous bar" of a symbol is its previous traded bar. Indicators
come from the same TA-Lib-exact kernels as the streaming features (`gpu_kernels.indicators`), run once per
distinct (kind, parameters) and kept in a bounded cache for the whole run, so a 1,000-set sweep over 50
fast windows computes 50 averages, not 1,000. Those kernels run on the CPU; their output is moved to the
strategy's array module (`xp`) once.

`get(kind, *args)` takes one value per parameter set (or one for all) and returns (P, symbols, bars), or
(1, symbols, bars) when every set asks for the same series.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from gpu_kernels import indicators as ta
from gpu_kernels.backtest import Array, BarSequences, forward_fill
from processors.errors import InvalidCommand

Key = tuple[Any, ...]

# kind -> (input column, smallest window, parameter count)
KINDS: dict[str, tuple[str, int, int]] = {
    "sma": ("close", 1, 1),
    "ema": ("close", 1, 1),
    "rsi": ("close", 2, 1),
    "bb_upper": ("close", 2, 2),
    "bb_middle": ("close", 2, 2),
    "bb_lower": ("close", 2, 2),
    "highest": ("high", 1, 1),
    "lowest": ("low", 1, 1),
}


class Indicators:
    """Bars and cached indicators of one run, on the array module `xp` (numpy or cupy)."""

    def __init__(self, panel: Mapping[str, np.ndarray], seq: BarSequences, xp: ModuleType,
                 cache_bytes: int = 256 << 20) -> None:
        """`panel`: open, high, low, close, volume as (time × symbols) arrays; `seq`: their packing (NumPy)."""
        self.xp = xp
        self._panel = panel
        self._seq = seq
        self._cpu: dict[str, np.ndarray] = {}
        self._dev: dict[str, Array] = {}
        self._cache: OrderedDict[Key, Array] = OrderedDict()
        self._cache_bytes = cache_bytes

    def bars(self, column: str) -> Array:
        """A packed bar column (symbols × bars) on `xp`, packed on first use (a strategy pays for what it reads)."""
        if column not in self._dev:
            self._dev[column] = self.xp.asarray(self._packed(column))
        return self._dev[column]

    def _packed(self, column: str) -> np.ndarray:
        if column not in self._cpu:
            self._cpu[column] = np.ascontiguousarray(self._seq.pack(np.asarray(self._panel[column], np.float64)))
        return self._cpu[column]

    open = property(lambda self: self.bars("open"), doc="packed opens (symbols × bars)")
    high = property(lambda self: self.bars("high"), doc="packed highs")
    low = property(lambda self: self.bars("low"), doc="packed lows")
    close = property(lambda self: self.bars("close"), doc="packed closes")
    volume = property(lambda self: self.bars("volume"), doc="packed volumes")

    # ------------------------------------------------------------------ series

    def get(self, kind: Any, *args: Any) -> Array:
        """Indicator `kind` (see KINDS; itself may differ per parameter set) with its parameters, e.g.
        `get("sma", p["fast"])`, `get(p["ma"], p["slow"])`, `get("bb_upper", p["window"], p["k"])`."""
        cols = [np.asarray(a, dtype=object).reshape(-1) for a in (kind, *args)]
        n = max(len(c) for c in cols)
        if any(len(c) not in (1, n) for c in cols):
            raise ValueError("indicator arguments must have one value, or one per parameter set")
        keys = [tuple(_plain(c[i if len(c) > 1 else 0]) for c in cols) for i in range(n)]
        unique = dict.fromkeys(keys)
        if len(unique) == 1:
            return self._series(keys[0])[None]
        arrays = {key: self._series(key) for key in unique}
        return self.xp.stack([arrays[key] for key in keys])

    def bollinger(self, window: Any, k: Any) -> tuple[Array, Array, Array]:
        """TA-Lib BBANDS (SMA middle, population standard deviation): upper, middle, lower."""
        return self.get("bb_upper", window, k), self.get("bb_middle", window, k), self.get("bb_lower", window, k)

    def param(self, values: Any) -> Array:
        """One number (or flag) per parameter set, shaped (P, 1, 1) to broadcast against the series."""
        arr = np.asarray(values)
        if arr.dtype.kind not in "biuf":
            raise ValueError("param() takes numbers or flags; compare strings before calling it")
        return self.xp.asarray(arr).reshape(-1, 1, 1)

    def panel(self, values: np.ndarray) -> Array:
        """A (time × symbols) array of the run's bar panel (an external signal, say), packed like the bars."""
        return self.xp.asarray(self._seq.pack(np.asarray(values, dtype=np.float64), fill=np.nan))

    # ------------------------------------------------------------------ helpers for signals

    def shift(self, x: Array, bars: int = 1) -> Array:
        """Each symbol's value `bars` bars earlier (NaN where there is none)."""
        xp = self.xp
        out = xp.full(x.shape, xp.nan)
        if bars < x.shape[-1]:
            out[..., bars:] = x[..., : x.shape[-1] - bars]
        return out

    def hold(self, x: Array) -> Array:
        """NaN replaced by the symbol's last value before it (NaN before the first)."""
        return forward_fill(x)

    def positions(self, long_entry: Array, long_exit: Array, short_entry: Array | None = None,
                  short_exit: Array | None = None) -> Array:
        """Targets from entry and exit conditions: an entry opens its side; an exit closes only its own side
        (a long exit does not close a short); otherwise the position is kept (NaN).

        Exits depend on which side was entered last, which is itself a forward fill of the entries, so this
        stays vectorized; an entry on both sides in one bar goes long.
        """
        xp = self.xp
        entry = xp.where(long_entry, 1.0, xp.nan)
        if short_entry is not None:
            entry = xp.where(long_entry, 1.0, xp.where(short_entry, -1.0, xp.nan))
        side = self.hold(entry)
        leave = (side > 0) & long_exit
        if short_exit is not None:
            leave = leave | ((side < 0) & short_exit)
        return xp.where(xp.isnan(entry), xp.where(leave, 0.0, xp.nan), entry)

    # ------------------------------------------------------------------ cache

    def _series(self, key: Key) -> Array:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        for k, cpu in self._compute(key).items():
            self._cache[k] = self.xp.asarray(cpu)
        wanted = self._cache[key]
        used = sum(int(a.nbytes) for a in self._cache.values())
        while used > self._cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            used -= int(dropped.nbytes)
        return wanted

    def _compute(self, key: Key) -> dict[Key, np.ndarray]:
        kind, *args = key
        spec = KINDS.get(kind) if isinstance(kind, str) else None
        if spec is None:
            raise InvalidCommand(f"unknown indicator {kind!r} (known: {', '.join(KINDS)})")
        column, smallest, arity = spec
        if len(args) != arity or not isinstance(args[0], int) or args[0] < smallest:
            raise InvalidCommand(f"indicator {kind}: needs a whole window of at least {smallest}"
                                 + (" and a band width" if arity == 2 else ""))
        n = args[0]
        x = self._packed(column)
        if kind == "sma":
            return {key: self._run(ta.sma, x, 1 + n, n)}
        if kind == "ema":
            return {key: self._run(ta.ema, x, 1, n)}
        if kind == "rsi":
            return {key: self._run(ta.rsi, x, 3, n)}
        if kind == "highest":
            return {key: self._run(ta.highest, x, 2 + n, n)}
        if kind == "lowest":
            return {key: self._run(ta.lowest, x, 2 + n, n)}
        k = float(args[1])
        bands = self._run(ta.bbands, x, 1 + ta.SLIDE_HEAD + 2 * n, n, k, columns=3)
        names = ("bb_upper", "bb_middle", "bb_lower")
        return {(name, n, args[1]): np.ascontiguousarray(bands[..., i]) for i, name in enumerate(names)}

    def _run(self, kernel: Callable[..., None], x: np.ndarray, width: int, n: int, *extra: float,
             columns: int = 1) -> np.ndarray:
        """One kernel over every symbol's packed row (padding stays NaN)."""
        symbols, length = x.shape
        slots = np.arange(symbols, dtype=np.int64)
        lo = slots * length
        hi = lo + np.asarray(self._seq.counts, dtype=np.int64)
        out = np.full((symbols * length, columns) if columns > 1 else symbols * length, np.nan)
        kernel(slots, lo, hi, x.ravel(), n, *extra, np.zeros(symbols, np.int64), np.zeros((symbols, width)), out)
        return out.reshape((symbols, length, columns) if columns > 1 else (symbols, length))


def _plain(v: Any) -> Any:
    """A cache-key value: strings as str, whole numbers as int (20 and 20.0 are one window), others float."""
    if isinstance(v, str):
        return str(v)
    if isinstance(v, bool | np.bool_):
        return bool(v)
    f = float(v)
    return int(f) if f.is_integer() else f

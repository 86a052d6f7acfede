"""Feature sets: indicator names (`sma_20`, `macd_hist_12_26_9`, ...) to kernels, with their state.

A `FeatureSet` parses the names once. `compute` takes bars grouped into segments (consecutive bars of
one series in time order, `seg_slot` naming the series' state row) and the state, and returns one
column per name plus the new state. The state is plain arrays, so a processor can write it to a
changelog and restore it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu_kernels import indicators as ind

DEFAULT_FEATURES = (
    "sma_20", "ema_12", "ema_26", "rsi_14", "macd_12_26_9", "macd_signal_12_26_9", "macd_hist_12_26_9",
    "bb_upper_20_2", "bb_middle_20_2", "bb_lower_20_2", "atr_14", "obv", "logret_1", "vol_20",
)

_NUM = r"(\d+(?:\.\d+)?)"
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(sma|ema|rsi|atr|vol)_(\d+)$"), "single"),
    (re.compile(r"^macd(_signal|_hist)?_(\d+)_(\d+)_(\d+)$"), "macd"),
    (re.compile(rf"^bb_(upper|middle|lower)_(\d+)_{_NUM}$"), "bb"),
    (re.compile(r"^obv$"), "obv"),
    (re.compile(r"^logret_1$"), "logret"),
]


class FeatureError(ValueError):
    """An indicator name that is not known or has impossible parameters."""


# kernel(seg_slot, seg_lo, seg_hi, high, low, close, volume, params, counts, vals, out): fills out[row] for
# the rows of each segment, continuing series seg_slot[g] from counts[slot] (bars seen) and vals[slot, :].
CustomKernel = Callable[..., None]


@dataclass(frozen=True, slots=True)
class CustomIndicator:
    """An indicator a user registers: names matching `pattern` (its groups are integer parameters)."""

    pattern: re.Pattern[str]
    width: Callable[[tuple[int, ...]], int]
    kernel: CustomKernel


_CUSTOM: dict[str, CustomIndicator] = {}


def register_indicator(kind: str, pattern: str, width: Callable[[tuple[int, ...]], int], kernel: CustomKernel) -> None:
    """Makes names matching `pattern` (e.g. r"^wma_(\\d+)$") usable in any FeatureSet, processor included."""
    if kind in _CUSTOM or kind in ("sma", "ema", "rsi", "atr", "macd", "bb", "obv", "logret_std"):
        raise FeatureError(f"indicator kind {kind!r} is already registered")
    _CUSTOM[kind] = CustomIndicator(re.compile(pattern), width, kernel)


@dataclass(frozen=True, slots=True)
class _Group:
    """One kernel run that fills one or more named columns."""

    kind: str
    params: tuple[float, ...]
    width: int
    columns: dict[str, int]  # feature name -> output column of the kernel


@dataclass(frozen=True, slots=True)
class FeatureState:
    """Per group: bars seen per series, and the float state row per series."""

    counts: tuple[np.ndarray, ...]
    vals: tuple[np.ndarray, ...]

    @property
    def slots(self) -> int:
        return len(self.counts[0]) if self.counts else 0


class FeatureSet:
    """The configured indicators, parsed and grouped into kernel runs."""

    def __init__(self, names: Sequence[str] = DEFAULT_FEATURES) -> None:
        if len(set(names)) != len(names):
            raise FeatureError("feature names repeat")
        self.names = tuple(names)
        groups: dict[tuple[str, tuple[float, ...]], dict[str, int]] = {}
        for name in names:
            kind, params, column = _parse(name)
            groups.setdefault((kind, params), {})[name] = column
        self._groups = [_Group(kind, params, _width(kind, params), cols) for (kind, params), cols in groups.items()]

    def empty_state(self, slots: int = 0) -> FeatureState:
        return FeatureState(
            counts=tuple(np.zeros(slots, np.int64) for _ in self._groups),
            vals=tuple(np.zeros((slots, g.width), np.float64) for g in self._groups),
        )

    def grow(self, state: FeatureState, slots: int) -> FeatureState:
        """The same state with room for `slots` series (new ones start empty)."""
        if slots <= state.slots:
            return state
        extra = slots - state.slots
        return FeatureState(
            counts=tuple(_xp(c).concatenate((c, _xp(c).zeros(extra, np.int64))) for c in state.counts),
            vals=tuple(_xp(v).concatenate((v, _xp(v).zeros((extra, v.shape[1])))) for v in state.vals),
        )

    def compute(self, state: FeatureState, seg_slot: Any, seg_lo: Any, seg_hi: Any, high: Any, low: Any,
                close: Any, volume: Any, kernels: Any = None) -> tuple[dict[str, Any], FeatureState]:
        """Columns for every row of the segments, and the state after them.

        On the array module of `close`: NumPy arrays run the CPU kernels (`gpu_kernels.indicators`), CuPy
        arrays the GPU ones (`gpu_kernels.cuda_indicators`), with the state moved to the device. `kernels`
        names another implementation with the same functions (the tests pass the CUDA source built for
        the host)."""
        xp = _xp(close)
        if kernels is None:
            kernels = ind if xp is np else _gpu_kernels()
        rows = len(close)
        seg_slot = xp.asarray(seg_slot, dtype=np.int64)
        seg_lo = xp.asarray(seg_lo, dtype=np.int64)
        seg_hi = xp.asarray(seg_hi, dtype=np.int64)
        if len(seg_slot) and int(seg_slot.max()) >= state.slots:
            state = self.grow(state, int(seg_slot.max()) + 1)
        counts_out = [xp.array(c) for c in state.counts]  # copies: the caller's state stays as it was
        vals_out = [xp.array(v) for v in state.vals]
        columns = [_alloc(xp, g, rows) for g in self._groups]
        # CPU: every group over one window of rows at a time, so the inputs stay in cache across the groups
        # (a series cut at a window edge simply continues from its state: the kernels are split-invariant).
        # GPU: one launch per group over all rows.
        windows = _windows(seg_slot, seg_lo, seg_hi, rows) if xp is np else [(seg_slot, seg_lo, seg_hi)]
        for w_slot, w_lo, w_hi in windows:
            for group, counts, vals, cols in zip(self._groups, counts_out, vals_out, columns, strict=True):
                _run(kernels, group, w_slot, w_lo, w_hi, high, low, close, volume, counts, vals, cols)
        out = {name: cols[column] for group, cols in zip(self._groups, columns, strict=True)
               for name, column in group.columns.items()}
        return {name: out[name] for name in self.names}, FeatureState(tuple(counts_out), tuple(vals_out))


def _windows(seg_slot: np.ndarray, seg_lo: np.ndarray, seg_hi: np.ndarray, rows: int,
             window: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The segments cut into windows of about `window` rows, in order.

    Segments are taken two at a time (the recursive kernels step two series side by side) and cut into
    pieces of at most window / 2 rows each, piece t of both in the same window; pieces of one series stay
    in order, so each series continues from its own state."""
    window = window or _WINDOW
    if rows <= window:
        yield seg_slot, seg_lo, seg_hi
        return
    half = window // 2
    slots, los, his = seg_slot.tolist(), seg_lo.tolist(), seg_hi.tolist()
    w_slot: list[int] = []
    w_lo: list[int] = []
    w_hi: list[int] = []
    filled = 0
    g, n = 0, len(slots)
    while g < n:
        members = (g, g + 1) if g + 1 < n and slots[g + 1] != slots[g] else (g,)
        longest = max(his[i] - los[i] for i in members)
        for t in range(0, max(longest, 1), half):
            for i in members:
                lo = los[i] + t
                hi = min(his[i], lo + half)
                if lo < hi:
                    w_slot.append(slots[i])
                    w_lo.append(lo)
                    w_hi.append(hi)
                    filled += hi - lo
            if filled >= window:
                yield np.asarray(w_slot, np.int64), np.asarray(w_lo, np.int64), np.asarray(w_hi, np.int64)
                w_slot, w_lo, w_hi, filled = [], [], [], 0
        g += len(members)
    if w_slot:
        yield np.asarray(w_slot, np.int64), np.asarray(w_lo, np.int64), np.asarray(w_hi, np.int64)


def _xp(a: Any) -> Any:
    """numpy, or cupy for a CuPy array (without importing CuPy where it is not used)."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def _gpu_kernels() -> Any:
    from gpu_kernels.cuda_indicators import GPU

    return GPU


def _parse(name: str) -> tuple[str, tuple[float, ...], int]:
    for kind, custom in _CUSTOM.items():
        m = custom.pattern.match(name)
        if m:
            return kind, tuple(float(g) for g in m.groups()), 0
    for pattern, family in _PATTERNS:
        m = pattern.match(name)
        if not m:
            continue
        if family == "single":
            kind, period = m.group(1), int(m.group(2))
            if period < (2 if kind in ("rsi", "vol") else 1):
                raise FeatureError(f"{name}: period too small")
            if kind == "vol":
                return "logret_std", (float(period),), 1
            return kind, (float(period),), 0
        if family == "macd":
            fast, slow, signal = int(m.group(2)), int(m.group(3)), int(m.group(4))
            if not 1 < fast < slow or signal < 1:
                raise FeatureError(f"{name}: MACD needs 1 < fast < slow and signal >= 1")
            return "macd", (float(fast), float(slow), float(signal)), {None: 0, "_signal": 1, "_hist": 2}[m.group(1)]
        if family == "bb":
            period, k = int(m.group(2)), float(m.group(3))
            if period < 2:
                raise FeatureError(f"{name}: period too small")
            return "bb", (float(period), k), {"upper": 0, "middle": 1, "lower": 2}[m.group(1)]
        if family == "obv":
            return "obv", (), 0
        return "logret_std", (0.0,), 0
    raise FeatureError(f"unknown feature {name!r}; known: sma_N, ema_N, rsi_N, atr_N, vol_N, "
                       "macd[_signal|_hist]_F_S_G, bb_upper|middle|lower_N_K, obv, logret_1")


def _width(kind: str, params: tuple[float, ...]) -> int:
    if kind in _CUSTOM:
        return _CUSTOM[kind].width(tuple(int(p) for p in params))
    if kind == "sma":
        return 1 + int(params[0])
    if kind in ("bb", "logret_std"):
        return 1 + ind.SLIDE_HEAD + 2 * int(params[0])
    return {"ema": 1, "rsi": 3, "macd": 3, "atr": 2, "obv": 2}[kind]


_WINDOW = 1 << 17


def _alloc(xp: Any, g: _Group, rows: int) -> list[Any]:
    # Our kernels write every row (NaN while warming up); a registered one may not, so it gets NaN first.
    if g.kind in _CUSTOM:
        return [xp.full(rows, np.nan)]
    if g.kind in ("macd", "bb"):
        block = xp.empty((rows, 3))
        return [block[:, 0], block[:, 1], block[:, 2], block]
    if g.kind == "logret_std":
        return [xp.empty(rows), xp.empty(rows)]
    return [xp.empty(rows)]


def _run(k: Any, g: _Group, seg_slot: Any, seg_lo: Any, seg_hi: Any, high: Any, low: Any, close: Any, volume: Any,
         counts: Any, vals: Any, cols: list[Any]) -> None:
    p = g.params
    if g.kind in _CUSTOM:
        _run_custom(_CUSTOM[g.kind], p, seg_slot, seg_lo, seg_hi, high, low, close, volume, counts, vals, cols[0])
    elif g.kind == "macd":
        k.macd(seg_slot, seg_lo, seg_hi, close, int(p[0]), int(p[1]), int(p[2]), counts, vals, cols[3])
    elif g.kind == "bb":
        k.bbands(seg_slot, seg_lo, seg_hi, close, int(p[0]), p[1], counts, vals, cols[3])
    elif g.kind == "logret_std":
        k.logret_std(seg_slot, seg_lo, seg_hi, close, int(p[0]), counts, vals, cols[0], cols[1])
    elif g.kind == "sma":
        k.sma(seg_slot, seg_lo, seg_hi, close, int(p[0]), counts, vals, cols[0])
    elif g.kind == "ema":
        k.ema(seg_slot, seg_lo, seg_hi, close, int(p[0]), counts, vals, cols[0])
    elif g.kind == "rsi":
        k.rsi(seg_slot, seg_lo, seg_hi, close, int(p[0]), counts, vals, cols[0])
    elif g.kind == "atr":
        k.atr(seg_slot, seg_lo, seg_hi, high, low, close, int(p[0]), counts, vals, cols[0])
    elif g.kind == "obv":
        k.obv(seg_slot, seg_lo, seg_hi, close, volume, counts, vals, cols[0])


def _run_custom(custom: CustomIndicator, p: tuple[float, ...], seg_slot: Any, seg_lo: Any, seg_hi: Any, high: Any,
                low: Any, close: Any, volume: Any, counts: Any, vals: Any, out: Any) -> None:
    """A registered kernel is a CPU function: on the GPU path its inputs come to the host and its results
    go back."""
    params = np.array([int(x) for x in p], np.int64)
    if _xp(close) is np:
        custom.kernel(seg_slot, seg_lo, seg_hi, high, low, close, volume, params, counts, vals, out)
        return
    host = [a.get() for a in (seg_slot, seg_lo, seg_hi, high, low, close, volume, counts, vals, out)]
    custom.kernel(*host[:7], params, *host[7:])
    counts.set(host[7])
    vals.set(host[8])
    out.set(host[9])

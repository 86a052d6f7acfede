"""Backtest strategies: a registry of small functions from indicator arrays and parameters to target positions.

A strategy is registered by name with the parameters it takes (type, default, range). The engine calls it
once per chunk of parameter sets with an `Indicators` view of the bars and a mapping of parameter name →
one value per parameter set, and it returns target positions shaped (parameter sets, symbols, bars), or
anything that broadcasts to that: 1 long, -1 short (flat when the run is long-only), 0 flat, NaN = keep
the position. Adding one needs no change to the engine:

    @register_strategy("above_average", params=[ParamSpec.integer("window", 50, 2, 1000)])
    def above_average(ind: Indicators, p: Params) -> Array:
        return ind.close > ind.get("sma", p["window"])  # long above the average, flat below

Parameters of a grid that break a strategy's cross-parameter rule (fast must be below slow, say) are
dropped from the grid; a single parameter set that breaks it is rejected.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gpu_kernels.backtest import Array
from processors.errors import InvalidCommand
from processors.indicator_bank import Indicators
from schemas.spec import Param, Scalar

Params = Mapping[str, np.ndarray]
Signal = Callable[[Indicators, Params], Array]
# A cross-parameter rule: the reason a parameter set is not allowed, or None.
Check = Callable[[Mapping[str, Scalar]], str | None]

MAX_PARAM_SETS = 20_000


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a strategy: its type, default and allowed values."""

    name: str
    kind: Literal["int", "float", "choice"]
    default: Scalar
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    doc: str = ""

    @classmethod
    def integer(cls, name: str, default: int, minimum: int, maximum: int, doc: str = "") -> ParamSpec:
        return cls(name, "int", default, minimum, maximum, doc=doc)

    @classmethod
    def number(cls, name: str, default: float, minimum: float, maximum: float, doc: str = "") -> ParamSpec:
        return cls(name, "float", default, minimum, maximum, doc=doc)

    @classmethod
    def choice(cls, name: str, default: str, choices: Sequence[str], doc: str = "") -> ParamSpec:
        return cls(name, "choice", default, choices=tuple(choices), doc=doc)

    def coerce(self, value: Any) -> Scalar:
        """The value as this parameter's type, or InvalidCommand saying what is wrong with it."""
        if self.kind == "choice":
            if value not in self.choices:
                raise InvalidCommand(f"parameter {self.name!r}: {value!r} is not one of {', '.join(self.choices)}")
            return str(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidCommand(f"parameter {self.name!r}: {value!r} is not a number")
        if self.kind == "int":
            if float(value) != int(value):
                raise InvalidCommand(f"parameter {self.name!r}: {value!r} is not a whole number")
            value = int(value)
        else:
            value = float(value)
        if not np.isfinite(value):
            raise InvalidCommand(f"parameter {self.name!r}: {value!r} is not finite")
        if self.minimum is not None and value < self.minimum:
            raise InvalidCommand(f"parameter {self.name!r}: {value} is below its minimum {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidCommand(f"parameter {self.name!r}: {value} is above its maximum {self.maximum:g}")
        return value


@dataclass(frozen=True)
class Strategy:
    name: str
    params: tuple[ParamSpec, ...]
    signal: Signal
    check: Check | None = None
    doc: str = field(default="", compare=False)

    def param_sets(self, given: Mapping[str, Param]) -> list[dict[str, Scalar]]:
        """Every parameter set of `given` (a list is a grid: the product of all lists), defaults filled in."""
        names = [p.name for p in self.params]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise InvalidCommand(f"strategy {self.name!r} has no parameter {unknown[0]!r} "
                                 f"(its parameters: {', '.join(names) or 'none'})")
        axes: list[list[Scalar]] = []
        for spec in self.params:
            raw = given.get(spec.name, spec.default)
            values = list(raw) if isinstance(raw, list | tuple) else [raw]
            if not values:
                raise InvalidCommand(f"parameter {spec.name!r}: an empty list")
            axes.append([spec.coerce(v) for v in values])
        total = int(np.prod([len(a) for a in axes], dtype=np.float64))
        if total > MAX_PARAM_SETS:
            raise InvalidCommand(f"the grid has {total:,} parameter sets; at most {MAX_PARAM_SETS:,} are allowed")
        sets = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]
        if self.check is None:
            return sets
        reasons = [self.check(s) for s in sets]
        kept = [s for s, why in zip(sets, reasons, strict=True) if why is None]
        if not kept:
            first = next(why for why in reasons if why is not None)
            raise InvalidCommand(first if total == 1 else f"no parameter set of the grid is valid: {first}")
        return kept


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str, params: Iterable[ParamSpec] = (), check: Check | None = None
                      ) -> Callable[[Signal], Signal]:
    """Decorator: makes `fn(ind, params) -> targets` runnable as `{"strategy": name}` in any backtest command."""
    specs = tuple(params)
    if len({p.name for p in specs}) != len(specs):
        raise ValueError(f"strategy {name!r}: parameter names repeat")
    for spec in specs:
        spec.coerce(spec.default)  # a default outside its own range is a bug in the registration

    def add(fn: Signal) -> Signal:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        STRATEGIES[name] = Strategy(name, specs, fn, check, (fn.__doc__ or "").strip())
        return fn

    return add


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise InvalidCommand(f"unknown strategy {name!r} (known: {', '.join(sorted(STRATEGIES))})") from None


# ------------------------------------------------------------------------------------------ built-ins


def _fast_below_slow(p: Mapping[str, Scalar]) -> str | None:
    return None if float(p["fast"]) < float(p["slow"]) else f"fast ({p['fast']}) must be below slow ({p['slow']})"


@register_strategy(
    "trend_following",
    params=[
        ParamSpec.integer("fast", 10, 1, 2000, "bars of the fast moving average"),
        ParamSpec.integer("slow", 30, 2, 5000, "bars of the slow moving average"),
        ParamSpec.choice("ma", "sma", ("sma", "ema"), "kind of moving average (TA-Lib SMA or EMA)"),
    ],
    check=_fast_below_slow,
)
def trend_following(ind: Indicators, p: Params) -> Array:
    """Long while the fast average is above the slow one, short (long_short) while below; flat while either warms up.

    State-based: it enters on the first bar where both averages exist and fast > slow, exits when fast <= slow.
    """
    fast = ind.get(p["ma"], p["fast"])
    slow = ind.get(p["ma"], p["slow"])
    return (fast > slow).astype(ind.xp.int8) - (fast < slow)  # NaN compares false: flat while warming up


def _exit_within_entry(p: Mapping[str, Scalar]) -> str | None:
    ok = float(p["exit_window"]) <= float(p["window"])
    return None if ok else f"exit_window ({p['exit_window']}) must not exceed window ({p['window']})"


@register_strategy(
    "breakout",
    params=[
        ParamSpec.integer("window", 20, 2, 2000, "bars of the entry channel (Donchian)"),
        ParamSpec.integer("exit_window", 10, 1, 2000, "bars of the exit channel"),
    ],
    check=_exit_within_entry,
)
def breakout(ind: Indicators, p: Params) -> Array:
    """Donchian channel breakout: long when the close exceeds the highest high of the previous `window` bars,
    out when it falls below the lowest low of the previous `exit_window` bars; short the mirror image."""
    close = ind.close
    long_entry = close > ind.shift(ind.get("highest", p["window"]))
    short_entry = close < ind.shift(ind.get("lowest", p["window"]))
    long_exit = close < ind.shift(ind.get("lowest", p["exit_window"]))
    short_exit = close > ind.shift(ind.get("highest", p["exit_window"]))
    return ind.positions(long_entry, long_exit, short_entry, short_exit)


def _rsi_levels(p: Mapping[str, Scalar]) -> str | None:
    if p["indicator"] != "rsi" or float(p["lower"]) < float(p["exit"]) < float(p["upper"]):
        return None
    return f"RSI levels must satisfy lower < exit < upper (got {p['lower']}, {p['exit']}, {p['upper']})"


@register_strategy(
    "mean_reversion",
    params=[
        ParamSpec.choice("indicator", "bollinger", ("bollinger", "rsi"), "Bollinger bands or RSI thresholds"),
        ParamSpec.integer("window", 20, 2, 2000, "bars of the bands or of the RSI"),
        ParamSpec.number("k", 2.0, 0.1, 10.0, "band width in standard deviations (bollinger)"),
        ParamSpec.number("lower", 30.0, 0.0, 100.0, "RSI below which to buy (rsi)"),
        ParamSpec.number("upper", 70.0, 0.0, 100.0, "RSI above which to sell short (rsi)"),
        ParamSpec.number("exit", 50.0, 0.0, 100.0, "RSI at which a position is closed (rsi)"),
    ],
    check=_rsi_levels,
)
def mean_reversion(ind: Indicators, p: Params) -> Array:
    """Buy below the lower band (close under Bollinger's lower band, or RSI under `lower`), close at the middle
    (the SMA, or RSI `exit`); short above the upper band, close at the middle."""
    xp = ind.xp
    kinds = set(p["indicator"].tolist())
    x: Any = None
    lo: Any = None
    hi: Any = None
    mid: Any = None
    if "bollinger" in kinds:
        upper, middle, lower = ind.bollinger(p["window"], p["k"])
        x, lo, hi, mid = ind.close, lower, upper, middle
    if "rsi" in kinds:
        rsi = ind.get("rsi", p["window"])
        levels = ind.param(p["lower"]), ind.param(p["upper"]), ind.param(p["exit"])
        if x is None:
            x, (lo, hi, mid) = rsi, levels
        else:  # a grid over both indicators: pick per parameter set
            use = ind.param(p["indicator"] == "rsi")
            x, lo, hi, mid = (xp.where(use, a, b) for a, b in zip((rsi, *levels), (x, lo, hi, mid), strict=True))
    return ind.positions(x < lo, x >= mid, x > hi, x <= mid)

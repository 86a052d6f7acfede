"""The feature engine: ticks of one partition → event-time bars per interval → indicator values per bar.

Pure and Kafka-free: `FeatureEngine.process(state, ticks)` returns what to publish and the new state;
the streaming processor adds Kafka in front (and checkpoints the state), the offline tool feeds files.
One engine state covers one input partition: the watermark is per partition, as in the stream.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gpu_kernels.bars import BarState, aggregate_bars
from gpu_kernels.features import DEFAULT_FEATURES, FeatureSet, FeatureState
from processors.feature_backend import FeatureBackend
from schemas.ticks import TickColumns

_INTERVAL = re.compile(r"^([1-9][0-9]*)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def interval_ms(name: str) -> int:
    m = _INTERVAL.match(name)
    if not m:
        raise ValueError(f"interval {name!r} is not like 500ms, 1s, 1m, 1h or 1d")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    intervals: tuple[str, ...] = ("1s", "1m")
    lateness_ms: int = 0
    features: tuple[str, ...] = DEFAULT_FEATURES
    backend: str = "auto"  # where the indicator kernels run: auto, cpu or gpu (processors.feature_backend)
    gpu_min_bars: int = 30_000  # under auto, smaller batches run on the CPU (faster there: bench/RESULTS.md)


@dataclass(frozen=True, slots=True)
class PartitionState:
    """Everything one input partition carries between micro-batches."""

    slots: dict[tuple[str, str], int] = field(default_factory=dict)  # (symbol, interval) -> series slot
    names: tuple[str, ...] = ()  # slot -> symbol
    bars: dict[str, BarState] = field(default_factory=dict)  # interval -> open bars (keys are slots)
    features: FeatureState | None = None


@dataclass(frozen=True, slots=True)
class ClosedBars:
    """Bars that closed in a batch with their indicator values, one row each."""

    interval: str
    symbol: np.ndarray  # object
    start: np.ndarray  # int64 ms
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    vwap: np.ndarray
    trades: np.ndarray
    features: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.start)


@dataclass(frozen=True, slots=True)
class EngineOutput:
    closed: list[ClosedBars]  # one per interval
    late: np.ndarray  # bool per input tick: too late for at least one interval's bar
    late_reason: list[str]  # per late tick (in order of np.flatnonzero(late))
    touched: set[str]  # symbols whose state changed: ticks arrived, or a bar of theirs closed


class FeatureEngine:
    """Bars and features for one partition's ticks, as a pure function of (state, ticks)."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.interval_ms = {name: interval_ms(name) for name in self.config.intervals}
        self.feature_set = FeatureSet(self.config.features)
        self.backend = FeatureBackend(self.config.backend, min_rows=self.config.gpu_min_bars)

    def empty_state(self) -> PartitionState:
        return PartitionState({}, (), {iv: BarState.empty() for iv in self.config.intervals},
                              self.feature_set.empty_state())

    def process(self, state: PartitionState, ticks: TickColumns) -> tuple[EngineOutput, PartitionState]:
        n = len(ticks)
        symbols = ticks.symbols
        # Copy the slot table only when this batch brings a series it has not seen.
        slots, names = state.slots, state.names
        new = [(s, iv) for s in symbols for iv in self.config.intervals if (s, iv) not in slots]
        if new:
            slots = dict(slots)
            for series in new:
                slots[series] = len(slots)
            names = names + tuple(sym for sym, _iv in new)
        late = np.zeros(n, bool)
        reasons: dict[int, list[str]] = {}
        closed: list[ClosedBars] = []
        bar_states = dict(state.bars)
        fstate = state.features or self.feature_set.empty_state()
        for iv in self.config.intervals:
            # Series slot of every tick for this interval (new symbols get new slots).
            code_to_slot = np.array([slots[(s, iv)] for s in symbols] or [0], np.int64)
            key = code_to_slot[ticks.symbol_codes] if n else np.empty(0, np.int64)
            res = aggregate_bars(bar_states[iv], key, ticks.ts, ticks.price, ticks.size, self.interval_ms[iv],
                                 self.config.lateness_ms)
            bar_states[iv] = res.state
            for i in np.flatnonzero(res.late).tolist():
                late[i] = True
                start = (int(ticks.ts[i]) // self.interval_ms[iv]) * self.interval_ms[iv]
                reasons.setdefault(i, []).append(
                    f"{iv} bar starting {start} closed at watermark {int(res.late_watermark[i])}")
            b = res.bars
            # Bars come sorted by (slot, start): each slot's run is one segment for the indicators.
            if len(b):
                bounds = np.flatnonzero(np.r_[True, b.key[1:] != b.key[:-1], True])
                seg_lo, seg_hi = bounds[:-1], bounds[1:]
                values, fstate = self.backend.compute(self.feature_set, fstate, b.key[seg_lo], seg_lo, seg_hi,
                                                      b.high, b.low, b.close, b.volume)
            else:
                values = {name: np.empty(0) for name in self.feature_set.names}
            closed.append(ClosedBars(iv, np.asarray(names, dtype=object)[b.key] if len(b) else np.empty(0, object),
                                     b.start,
                                     b.open, b.high, b.low, b.close, b.volume, b.vwap, b.trades, values))
        fstate = self.feature_set.grow(fstate, len(slots))  # every series has a state row, bars or not
        late_reason = ["late: " + "; ".join(reasons[i]) for i in sorted(reasons)]
        # A series' state changes when its ticks arrive and also when another symbol's tick moves the
        # watermark past its open bar (the bar closes, the indicators step): both kinds are touched.
        touched = set(symbols[c] for c in np.unique(ticks.symbol_codes).tolist()) if n else set()
        for c in closed:
            touched.update(c.symbol.tolist())
        return EngineOutput(closed, late, late_reason, touched), PartitionState(slots, names, bar_states, fstate)


def features_for_bars(feature_set: FeatureSet, symbols: Sequence[str] | np.ndarray, high: np.ndarray, low: np.ndarray,
                      close: np.ndarray, volume: np.ndarray, backend: FeatureBackend | None = None
                      ) -> dict[str, np.ndarray]:
    """Indicators over finished bars (rows grouped by symbol, each group in time order), on `backend` if given
    (else the CPU)."""
    sym = np.asarray(symbols, dtype=object)
    if len(sym) == 0:
        return {name: np.empty(0) for name in feature_set.names}
    bounds = np.flatnonzero(np.r_[True, sym[1:] != sym[:-1], True])
    seg_lo, seg_hi = bounds[:-1], bounds[1:]
    args = (feature_set.empty_state(), np.arange(len(seg_lo)), seg_lo, seg_hi, high, low, close, volume)
    values, _ = backend.compute(feature_set, *args) if backend is not None else feature_set.compute(*args)
    return values


__all__ = ["ClosedBars", "EngineConfig", "EngineOutput", "FeatureEngine", "PartitionState",
           "features_for_bars", "interval_ms"]

"""Portfolio simulation of target positions over parameter sets × symbols × bars, on NumPy or CuPy (`xp`).

The model (the docs' "Backtests" section states it for users): each symbol is a sleeve holding an equal
share of the capital; a sleeve is all in (long or short) or all out, with fractional units; every fill pays
slippage on its price (against the trader) and a fee on its traded notional; the fill is at the close of
the bar whose target changed, or at the open of the symbol's next tradable bar. A sleeve whose value has
fallen to zero or below after closing a position opens no new one. Halted or missing bars never trade;
the sleeve keeps its value across them.

Why the arrays look the way they do:

* **Bar sequences.** Each symbol's tradable bars are packed to the left of its row (`BarSequences`), so a
  strategy and the simulation see gap-free series per symbol and never special-case a halt; results are
  mapped back to the panel's bar times at the end. Rows shorter than the longest are padded with copies of
  their last bar, during which the position is frozen.
* **Events, not bars.** A sleeve's state changes only where its position changes. Between two such events
  its cash and (signed) units are constant, so its value at any bar is `cash + units * close`. The engine
  finds the events (a few per cent of the cells), chains the value from one event to the next per row with
  one cumulative product over the events, and then fills every cell with one gather and one multiply-add.
  That is a handful of passes over the dense arrays instead of a per-bar loop, and it is the same code on
  a GPU, where a per-bar loop would be thousands of kernel launches.

Only operations that NumPy and CuPy both have are used (no `ufunc.accumulate`: CuPy lacks it), so the CPU
tests exercise the GPU path's code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or cupy.ndarray


def array_module(a: Any) -> ModuleType:
    """numpy, or cupy for an array that lives on a GPU (CuPy is imported only when such an array exists)."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


@dataclass(frozen=True)
class BarSequences:
    """Where each symbol's tradable bars sit in the panel (time × symbols), packed per symbol (symbols × L).

    take[s, k]: the panel row of symbol s's k-th tradable bar; padding repeats its last one (row 0 if none).
    hold[s, k]: the packed index whose position applies at k (k itself, or the last real bar on padding).
    last[s, t]: the packed index in force at panel row t (the latest tradable bar at or before t; -1 before
    the first). The `*_flat` forms index a flattened (symbols × L) row, which `take` gathers fastest;
    `unlisted` (float 0/1, S × T) marks panel rows before a symbol's first bar, where its sleeve is untouched
    capital. `empty[s]`: the symbol has no tradable bar.
    """

    take: Array
    hold_flat: Array
    last_flat: Array
    unlisted: Array | None
    counts: Array
    empty: Array
    rows: int  # T, the panel's bars
    padded: bool  # some symbol has fewer tradable bars than the longest: padding exists
    identity: bool  # every symbol trades on every panel row: packing changes nothing

    @property
    def symbols(self) -> int:
        return int(self.take.shape[0])

    @property
    def length(self) -> int:
        return int(self.take.shape[1])

    def on(self, xp: ModuleType) -> BarSequences:
        """The same index on another array module (device arrays for CuPy)."""
        return replace(self, take=xp.asarray(self.take), hold_flat=xp.asarray(self.hold_flat),
                       last_flat=xp.asarray(self.last_flat), counts=xp.asarray(self.counts),
                       empty=xp.asarray(self.empty),
                       unlisted=None if self.unlisted is None else xp.asarray(self.unlisted))

    def pack(self, panel: Array, fill: float = 1.0) -> Array:
        """A (time × symbols) panel array as packed rows (symbols × L); a symbol without bars gets `fill`."""
        xp = array_module(panel)
        if self.identity:
            return xp.ascontiguousarray(panel.T)
        out = xp.take(panel.ravel(), self.take * self.symbols + xp.arange(self.symbols)[:, None])
        if bool(self.empty.any()):
            out[self.empty] = fill
        return out


def bar_sequences(tradable: np.ndarray) -> BarSequences:
    """The packing of a (time × symbols) mask of tradable bars (computed once per run, on the CPU)."""
    tradable = np.asarray(tradable, dtype=bool)
    rows, symbols = tradable.shape
    base = np.arange(symbols, dtype=np.int64)[:, None]
    if tradable.all() and rows > 0:
        k = np.broadcast_to(np.arange(rows, dtype=np.int64), (symbols, rows))
        flat = base * rows + k
        return BarSequences(take=k, hold_flat=flat, last_flat=flat, unlisted=None,
                            counts=np.full(symbols, rows, np.int64), empty=np.zeros(symbols, bool), rows=rows,
                            padded=False, identity=True)
    by_symbol = np.ascontiguousarray(tradable.T)
    counts = by_symbol.sum(axis=1).astype(np.int64)
    length = max(int(counts.max(initial=0)), 1)
    last = np.cumsum(by_symbol, axis=1, dtype=np.int32) - 1
    take = np.argsort(~by_symbol, axis=1, kind="stable")[:, :length]  # tradable rows first, in time order
    hold = np.minimum(np.arange(length)[None, :], np.maximum(counts - 1, 0)[:, None])
    take = np.where(hold < np.arange(length)[None, :], take[base[:, 0], hold[:, -1]][:, None], take)
    before = last < 0
    return BarSequences(take=take, hold_flat=base * length + hold, last_flat=base * length + np.maximum(last, 0),
                        unlisted=before.astype(np.float64) if before.any() else None, counts=counts,
                        empty=counts == 0, rows=rows, padded=bool((counts < length).any()), identity=False)


@dataclass(frozen=True)
class Fills:
    """How orders fill: fee and slippage as fractions (10 bps = 0.001), execution, direction."""

    fee: float = 0.0
    slippage: float = 0.0
    next_open: bool = False
    long_short: bool = False


@dataclass(frozen=True)
class Simulation:
    """Per parameter set (P) and symbol (S); arrays on the input's module."""

    equity: Array  # (P, T) portfolio value at each panel bar's close
    final: Array  # (P, S) each sleeve's value at the end
    entries: Array  # (P, S) positions opened (a trade still open at the end included)
    exits: Array  # (P, S) positions closed
    wins: Array  # (P, S) closed positions that made money after all costs
    notional: Array  # (P,) traded notional of every fill
    exposure: Array  # (P,) share of sleeve-bars spent holding a position


def forward_fill(x: Array, initial: float = float("nan")) -> Array:
    """NaN takes the last non-NaN value before it along the last axis (`initial` before the first).

    Every row's first cell counts as known, so a flat rank over the whole array never crosses into the
    previous row: one cumulative sum and one gather, on either module.
    """
    xp = array_module(x)
    length = x.shape[-1]
    flat = xp.array(x, dtype=xp.float64).reshape(-1, length)
    head = flat[:, 0]
    flat[:, 0] = xp.where(xp.isnan(head), initial, head)
    known = ~xp.isnan(flat)
    known[:, 0] = True
    source = xp.flatnonzero(known)
    rank = xp.cumsum(known.ravel(), dtype=xp.int64) - 1
    return flat.ravel()[source[rank]].reshape(x.shape)


def simulate(target: Array, open_: Array, close: Array, seq: BarSequences, capital: float, fills: Fills) -> Simulation:
    """Trades target positions (P × S × L; 1 long, -1 short, 0 flat, NaN = keep the position) on packed bars.

    Targets may be floats (any sign counts; NaN keeps), integers or flags (True = long).

    `open_` and `close` are packed (S × L, `BarSequences.pack`) and `seq` is on the same module as `target`.
    A negative target means flat for long-only runs. `capital` is one sleeve's starting value.
    """
    xp = array_module(target)
    t = xp.asarray(target)
    if t.dtype.kind == "f":
        x = xp.sign(t)
        if not fills.long_short:
            x = xp.maximum(x, 0.0)  # NaN stays NaN
        if bool(xp.isnan(x).any()):
            x = forward_fill(x, 0.0)
        x = x.astype(xp.int8)  # one byte per cell from here on: the dense passes below are memory-bound
    else:  # integers and flags cannot say "keep", so there is nothing to carry forward
        x = xp.sign(t.astype(xp.int8))
        if not fills.long_short:
            x = xp.maximum(x, 0)
    if fills.next_open:  # decided at a bar's close, filled at the next bar's open
        held = xp.zeros_like(x)
        held[..., 1:] = x[..., :-1]
        price = open_
    else:
        held, price = x, close
    if seq.padded:
        held = xp.take(held.reshape(held.shape[0], -1), seq.hold_flat, axis=1)
    if bool(seq.empty.any()):
        held[:, seq.empty] = 0
    return _account(held, price, close, seq, capital, fills, final_pass=False)


def _account(held: Array, price: Array, close: Array, seq: BarSequences, capital: float, fills: Fills,
             final_pass: bool) -> Simulation:
    """Cash and units per position change, chained per row; then every cell's value from its last change."""
    xp = array_module(held)
    n_sets, n_sym, length = held.shape
    rows = n_sets * n_sym
    h = xp.ascontiguousarray(held).reshape(rows, length)
    change = xp.empty((rows, length), dtype=bool)
    change[:, 0] = True  # every row opens with an event, so per-row chains never reach into the previous row
    xp.not_equal(h[:, 1:], h[:, :-1], out=change[:, 1:])
    ev = xp.flatnonzero(change)
    n_ev = int(ev.shape[0])
    row = ev // length
    k = ev - row * length
    sym = row % n_sym
    cell = sym * length + k
    d_new = h.ravel()[ev].astype(xp.float64)
    d_old = xp.where(k == 0, 0.0, h.ravel()[xp.maximum(ev - 1, 0)].astype(xp.float64))
    px = price.ravel()[cell]
    fee, slip = fills.fee, fills.slippage

    # Per unit of the value the sleeve has before the event's entry: cash and signed units after it.
    # Long: units = value / (ask * (1 + fee)), no cash left; short: cash = value + proceeds - fee.
    opening = d_new != 0
    ask = px * (1.0 + d_new * slip)
    cash_per = xp.where(opening, 1.0 - (d_new + fee) / (1.0 + fee), 1.0)
    units_per = xp.where(opening, d_new / (ask * (1.0 + fee)), 0.0)

    # Closing the position opened at the previous event (the same row whenever d_old != 0): the value
    # after the exit as a multiple of the value before that entry.
    closing = d_old != 0
    prev = xp.maximum(xp.arange(n_ev) - 1, 0)
    bid = px * (1.0 - d_old * slip)
    cash_prev, units_prev = cash_per[prev], units_per[prev]
    growth = xp.where(closing, cash_prev + units_prev * bid - xp.abs(units_prev) * bid * fee, 1.0)

    if not final_pass and bool((closing & (growth <= 0.0)).any()):
        return _account(_freeze_after_ruin(h, row, k, closing & (growth <= 0.0)).reshape(held.shape),
                        price, close, seq, capital, fills, final_pass=True)

    first = xp.flatnonzero(k == 0)  # each row's first event, in row order
    slot = xp.arange(n_ev) - first[row]
    chain = xp.ones((rows, int(slot.max()) + 1 if n_ev else 1))
    chain[row, slot] = growth
    value_before = capital * xp.cumprod(chain, axis=1)[row, slot]  # after this event's exit, before its entry
    cash = value_before * cash_per
    units = value_before * units_per

    shape = (n_sets, n_sym, length)
    value = _spread(units, ev, change).reshape(shape) * close + _spread(cash, ev, change).reshape(shape)
    if seq.identity:
        equity = value.sum(axis=1)
    else:  # each panel row takes the sleeve's value at its latest tradable bar
        equity = xp.take(value.reshape(n_sets, -1), seq.last_flat, axis=1).sum(axis=1)
        if seq.unlisted is not None:  # rows before a symbol's first bar: its capital, not its first value
            equity += (capital - value[:, :, 0]) @ seq.unlisted

    win = closing & (growth > 1.0)
    value_prev = value_before[prev]
    traded = xp.where(opening, value_before / (1.0 + fee), 0.0) + xp.where(
        closing, value_prev * xp.abs(units_prev) * bid, 0.0)
    at = seq.take.ravel()[cell]  # panel row of each event
    nxt = xp.minimum(xp.arange(n_ev) + 1, n_ev - 1)
    same_row = (row[nxt] == row) & (xp.arange(n_ev) < n_ev - 1)
    until = xp.where(same_row, at[nxt], seq.rows)
    held_rows = xp.where(opening, until - at, 0)
    param_set = row // n_sym

    def per_row(weights: Array) -> Array:
        return xp.bincount(row, weights=weights, minlength=rows).reshape(n_sets, n_sym)

    return Simulation(
        equity=equity,
        final=value[:, :, -1],
        entries=per_row(opening.astype(xp.float64)),
        exits=per_row(closing.astype(xp.float64)),
        wins=per_row(win.astype(xp.float64)),
        notional=xp.bincount(param_set, weights=traded, minlength=n_sets),
        exposure=xp.bincount(param_set, weights=held_rows.astype(xp.float64), minlength=n_sets)
        / float(n_sym * seq.rows),
    )


def _spread(values: Array, ev: Array, change: Array, by_gather: bool = False) -> Array:
    """Every cell gets the value of its latest event (`ev`: flat positions of the events, `change`: their mask).

    NumPy repeats each value over its run (several times faster than a cumulative sum and a gather); CuPy
    cannot repeat by a device array of counts, so it gathers by the running event count.
    """
    xp = array_module(values)
    if xp is np and not by_gather:
        runs = np.diff(ev, append=change.size)
        return np.repeat(values, runs)
    return values[xp.cumsum(change.ravel(), dtype=xp.int64) - 1]


def _freeze_after_ruin(h: Array, row: Array, k: Array, ruined: Array) -> Array:
    """Positions of rows whose sleeve was wiped out: flat from the ruinous exit on (no new entries)."""
    xp = array_module(h)
    rows, length = h.shape
    r_rows, r_k = row[ruined], k[ruined]
    first_of_row = xp.ones(r_rows.shape, dtype=bool)
    first_of_row[1:] = r_rows[1:] != r_rows[:-1]  # events are sorted by row, then bar
    stop = xp.full(rows, length)
    stop[r_rows[first_of_row]] = r_k[first_of_row]
    return xp.where(xp.arange(length)[None, :] >= stop[:, None], 0, h).astype(h.dtype)

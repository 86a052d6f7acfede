"""Event-time OHLCV bars from tick columns, with the open bars as explicit state.

`aggregate_bars(state, ticks...)` is pure: it takes the state (open bars and the partition's highest
event time) and a micro-batch of ticks in arrival order, and returns the bars that closed, the ticks
that came too late, and the new state. Feeding a stream through it in any cut of micro-batches gives
bit-for-bit the same bars as feeding it whole: every sum is a left fold in arrival order, continued
from the state.

Semantics (one partition, one interval `I` in ms, allowed lateness `L` in ms):
- A tick at `ts` belongs to the bar `[b, b + I)` with `b = floor(ts / I) * I`.
- The watermark seen by a tick is the highest `ts` of the ticks before it (in this partition) minus
  `L`. A bar is closed once the watermark reaches its end `b + I`; a tick for a closed bar is late: it
  joins no bar and is reported.
- open is the price of the bar's earliest tick by (ts, arrival), close of its latest; high, low;
  volume = sum of sizes; vwap = sum(price * size) / volume (None when volume is 0); trades = count.
- An interval with no ticks has no bar. Bars that closed are returned sorted by (key, start).

CPU implementation: NumPy for the vectorizable parts, a compiled (Numba) loop for the folds. The GPU
path (CuPy segmented reductions) is not written yet: callers pass NumPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

NO_TICK = np.iinfo(np.int64).min


@dataclass(frozen=True, slots=True)
class BarState:
    """The open bars of one partition and interval, sorted by (key, start), plus its event-time high mark."""

    key: np.ndarray  # int64: the series (e.g. symbol slot) of each open bar
    start: np.ndarray  # int64 ms
    open_ts: np.ndarray  # int64: (ts, seq) of the tick that set open ...
    open_seq: np.ndarray  # int64
    close_ts: np.ndarray  # ... and of the one that set close
    close_seq: np.ndarray
    open: np.ndarray  # float64
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    pv: np.ndarray  # sum of price * size
    trades: np.ndarray  # int64
    max_ts: int  # highest ts seen, NO_TICK before the first tick
    next_seq: int  # arrival number of the next tick

    @classmethod
    def empty(cls) -> BarState:
        i, f = np.empty(0, np.int64), np.empty(0, np.float64)
        return cls(i, i, i, i, i, i, f, f, f, f, f, f, i, NO_TICK, 0)

    def __len__(self) -> int:
        return len(self.key)


@dataclass(frozen=True, slots=True)
class Bars:
    """Closed bars, sorted by (key, start)."""

    key: np.ndarray
    start: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    vwap: np.ndarray  # NaN where volume is 0
    trades: np.ndarray

    def __len__(self) -> int:
        return len(self.key)


@dataclass(frozen=True, slots=True)
class BarBatch:
    bars: Bars
    late: np.ndarray  # bool per input tick
    late_watermark: np.ndarray  # int64 per input tick: the watermark the tick met (for the reason)
    state: BarState


def aggregate_bars(state: BarState, key: np.ndarray, ts: np.ndarray, price: np.ndarray, size: np.ndarray,
                   interval_ms: int, lateness_ms: int = 0) -> BarBatch:
    """Folds a micro-batch of ticks (arrival order) into the open bars; returns closed bars and late ticks."""
    if interval_ms <= 0 or lateness_ms < 0:
        raise ValueError("interval must be positive and lateness not negative")
    n = len(ts)
    key = np.asarray(key, np.int64)
    ts = np.asarray(ts, np.int64)
    price = np.asarray(price, np.float64)
    size = np.asarray(size, np.float64)
    seq = np.arange(state.next_seq, state.next_seq + n, dtype=np.int64)

    # The watermark each tick meets: the high mark of the ticks before it, minus the lateness.
    high_mark = np.maximum.accumulate(np.concatenate(([state.max_ts], ts)))
    before = high_mark[:-1]
    watermark = np.where(before == NO_TICK, NO_TICK, before - lateness_ms)
    start = np.floor_divide(ts, interval_ms) * interval_ms
    late = (before != NO_TICK) & (start + interval_ms <= watermark)
    ok = ~late

    # Group the surviving ticks with the open bars by (key, start); within a group keep arrival order.
    tk, tsrt, tts, tseq, tp, tsz = key[ok], start[ok], ts[ok], seq[ok], price[ok], size[ok]
    order = np.lexsort((tseq, tsrt, tk))
    tk, tsrt, tts, tseq, tp, tsz = tk[order], tsrt[order], tts[order], tseq[order], tp[order], tsz[order]
    groups = _merge_groups(state.key, state.start, tk, tsrt)
    out = _fold(groups, state, tk, tsrt, tts, tseq, tp, tsz)

    new_max = int(high_mark[-1])
    final_wm = NO_TICK if new_max == NO_TICK else new_max - lateness_ms
    g_key, g_start = out[0], out[1]
    closed = (g_start + interval_ms <= final_wm) if final_wm != NO_TICK else np.zeros(len(g_key), bool)
    keep = ~closed
    (gk, gs, ots, oseq, cts, cseq, o, h, lo, c, v, pv, cnt) = out
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap = np.where(v[closed] > 0, pv[closed] / v[closed], np.nan)
    bars = Bars(gk[closed], gs[closed], o[closed], h[closed], lo[closed], c[closed], v[closed], vwap, cnt[closed])
    new_state = BarState(gk[keep], gs[keep], ots[keep], oseq[keep], cts[keep], cseq[keep], o[keep], h[keep],
                         lo[keep], c[keep], v[keep], pv[keep], cnt[keep], new_max, state.next_seq + n)
    return BarBatch(bars, late, np.where(late, watermark, NO_TICK), new_state)


def _merge_groups(s_key: np.ndarray, s_start: np.ndarray, t_key: np.ndarray, t_start: np.ndarray) -> np.ndarray:
    """For each sorted tick, the index of its (key, start) group in the union of open bars and ticks."""
    all_key = np.concatenate((s_key, t_key))
    all_start = np.concatenate((s_start, t_start))
    order = np.lexsort((all_start, all_key))
    k, s = all_key[order], all_start[order]
    new_group = np.ones(len(k), bool)
    new_group[1:] = (k[1:] != k[:-1]) | (s[1:] != s[:-1])
    gid_sorted = np.cumsum(new_group) - 1
    gid = np.empty(len(k), np.int64)
    gid[order] = gid_sorted
    return gid  # first len(s_key) entries: open bars' groups; the rest: ticks'


def _fold(gid: np.ndarray, state: BarState, t_key: np.ndarray, t_start: np.ndarray, ts: np.ndarray,
          seq: np.ndarray, price: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, ...]:
    n_open = len(state)
    n_groups = int(gid.max()) + 1 if len(gid) else 0
    return _fold_loop(n_groups, gid[:n_open], gid[n_open:], state.key, state.start, state.open_ts,
                      state.open_seq, state.close_ts, state.close_seq, state.open, state.high, state.low,
                      state.close, state.volume, state.pv, state.trades, t_key, t_start, ts, seq, price, size)


@njit(cache=True)
def _fold_loop(n_groups, open_gid, tick_gid, s_key, s_start, s_ots, s_oseq, s_cts, s_cseq, s_o, s_h, s_l, s_c,
               s_v, s_pv, s_n, t_key, t_start, t_ts, t_seq, t_p, t_sz):
    key = np.empty(n_groups, np.int64)
    start = np.empty(n_groups, np.int64)
    ots = np.empty(n_groups, np.int64)
    oseq = np.empty(n_groups, np.int64)
    cts = np.empty(n_groups, np.int64)
    cseq = np.empty(n_groups, np.int64)
    o = np.empty(n_groups, np.float64)
    h = np.empty(n_groups, np.float64)
    lo = np.empty(n_groups, np.float64)
    c = np.empty(n_groups, np.float64)
    v = np.empty(n_groups, np.float64)
    pv = np.empty(n_groups, np.float64)
    cnt = np.zeros(n_groups, np.int64)
    for j in range(len(open_gid)):
        g = open_gid[j]
        key[g] = s_key[j]
        start[g] = s_start[j]
        ots[g] = s_ots[j]
        oseq[g] = s_oseq[j]
        cts[g] = s_cts[j]
        cseq[g] = s_cseq[j]
        o[g] = s_o[j]
        h[g] = s_h[j]
        lo[g] = s_l[j]
        c[g] = s_c[j]
        v[g] = s_v[j]
        pv[g] = s_pv[j]
        cnt[g] = s_n[j]
    # Ticks come sorted by (key, start, arrival): each group folds its ticks in arrival order.
    for i in range(len(tick_gid)):
        g = tick_gid[i]
        p = t_p[i]
        if cnt[g] == 0:
            key[g] = t_key[i]
            start[g] = t_start[i]
            ots[g] = t_ts[i]
            oseq[g] = t_seq[i]
            cts[g] = t_ts[i]
            cseq[g] = t_seq[i]
            o[g] = p
            h[g] = p
            lo[g] = p
            c[g] = p
            v[g] = t_sz[i]
            pv[g] = p * t_sz[i]
            cnt[g] = 1
            continue
        if p > h[g]:
            h[g] = p
        if p < lo[g]:
            lo[g] = p
        if t_ts[i] < ots[g] or (t_ts[i] == ots[g] and t_seq[i] < oseq[g]):
            o[g] = p
            ots[g] = t_ts[i]
            oseq[g] = t_seq[i]
        if t_ts[i] > cts[g] or (t_ts[i] == cts[g] and t_seq[i] > cseq[g]):
            c[g] = p
            cts[g] = t_ts[i]
            cseq[g] = t_seq[i]
        v[g] += t_sz[i]
        pv[g] += p * t_sz[i]
        cnt[g] += 1
    return key, start, ots, oseq, cts, cseq, o, h, lo, c, v, pv, cnt

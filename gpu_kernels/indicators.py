"""Technical indicators with TA-Lib's definitions, over many series at once, with explicit state.

Every kernel here takes a batch of rows grouped into segments (one segment = consecutive bars of one
series, e.g. one symbol and interval, in time order), the state of each series (`counts`: bars seen so
far; `vals`: a float row per series) and returns the outputs per row. The state is copied, never changed
in place, so the caller can checkpoint it; feeding a series in any cut of batches gives bit-for-bit the
outputs of feeding it whole, because each step continues exactly from the state.

Definitions follow TA-Lib (checked against the TA-Lib package in the tests, to 1e-9 relative): SMA by a
running total; EMA seeded with the SMA of its first N inputs; RSI and ATR with Wilder smoothing seeded by
simple means; MACD whose fast EMA is seeded over the `fast` bars ending where the slow EMA's seed ends,
with all three outputs starting once the signal EMA is seeded; population standard deviation;
OBV starting from the first bar's volume; MAX and MIN over the last n inputs (the backtests' Donchian
channels). A value still warming up is NaN.

CPU implementation: compiled loops (Numba) over segments. The GPU path is the same loops in CUDA C
(`indicators.cu`, launched through CuPy by `cuda_indicators.py`), one thread per series.
"""

from __future__ import annotations

import math

from numba import njit

# TA-Lib's zero test for RSI's gain + loss (TA_IS_ZERO).
_ZERO = 1e-14


@njit(cache=True)
def sma(seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
    """vals[s] = [running total, ring of the last n inputs]."""
    for g in range(len(seg_slot)):
        s = seg_slot[g]
        c = counts[s]
        row = vals[s]
        i = c % n  # ring position of this bar; stepped, not divided, in the loop
        for r in range(seg_lo[g], seg_hi[g]):
            v = x[r]
            row[1 + i] = v
            total = row[0] + v
            i += 1
            if i == n:
                i = 0
            if c >= n - 1:
                out[r] = total / n
                total -= row[1 + i]  # the oldest value in the window (n == 1: the one just written)
            else:
                out[r] = math.nan
            row[0] = total
            c += 1
        counts[s] = c


@njit(cache=True)
def ema(seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
    """vals[s] = [seed sum, then the EMA]."""
    k = 2.0 / (n + 1)
    for g in range(len(seg_slot)):
        s = seg_slot[g]
        c = counts[s]
        e = vals[s, 0]
        for r in range(seg_lo[g], seg_hi[g]):
            v = x[r]
            if c < n - 1:
                e += v
                out[r] = math.nan
            elif c == n - 1:
                e += v
                e = e / n
                out[r] = e
            else:
                e = ((v - e) * k) + e
                out[r] = e
            c += 1
        vals[s, 0] = e
        counts[s] = c


@njit(cache=True)
def rsi(seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
    """vals[s] = [previous input, average gain, average loss]."""
    for g in range(len(seg_slot)):
        s = seg_slot[g]
        c = counts[s]
        prev, gain, loss = vals[s, 0], vals[s, 1], vals[s, 2]
        for r in range(seg_lo[g], seg_hi[g]):
            v = x[r]
            if c == 0:
                prev = v
                out[r] = math.nan
            else:
                d = v - prev
                prev = v
                if c > n:
                    loss *= n - 1
                    gain *= n - 1
                if d < 0:
                    loss -= d
                else:
                    gain += d
                if c >= n:
                    loss /= n
                    gain /= n
                    t = gain + loss
                    out[r] = 0.0 if -_ZERO < t < _ZERO else 100.0 * (gain / t)
                else:
                    out[r] = math.nan
            c += 1
        vals[s, 0], vals[s, 1], vals[s, 2] = prev, gain, loss
        counts[s] = c


@njit(cache=True)
def macd(seg_slot, seg_lo, seg_hi, x, fast, slow, signal, counts, vals, out):
    """vals[s] = [fast EMA (or its seed sum), slow EMA (or seed), signal EMA (or seed)]; out: macd, signal, hist."""
    kf = 2.0 / (fast + 1)
    ks = 2.0 / (slow + 1)
    kg = 2.0 / (signal + 1)
    fast_from = slow - fast  # the fast EMA's seed covers the `fast` bars ending with the slow one's
    for g in range(len(seg_slot)):
        s = seg_slot[g]
        c = counts[s]
        ef, es, eg = vals[s, 0], vals[s, 1], vals[s, 2]
        for r in range(seg_lo[g], seg_hi[g]):
            v = x[r]
            if c < slow - 1:
                es += v
                if c >= fast_from:
                    ef += v
            elif c == slow - 1:
                es += v
                es = es / slow
                ef += v
                ef = ef / fast
            else:
                es = ((v - es) * ks) + es
                ef = ((v - ef) * kf) + ef
            out[r, 0], out[r, 1], out[r, 2] = math.nan, math.nan, math.nan
            if c >= slow - 1:
                m = ef - es
                j = c - (slow - 1)
                if j < signal - 1:
                    eg += m
                elif j == signal - 1:
                    eg += m
                    eg = eg / signal
                    out[r, 0], out[r, 1], out[r, 2] = m, eg, m - eg
                else:
                    eg = ((m - eg) * kg) + eg
                    out[r, 0], out[r, 1], out[r, 2] = m, eg, m - eg
            c += 1
        vals[s, 0], vals[s, 1], vals[s, 2] = ef, es, eg
        counts[s] = c


@njit(cache=True)
def bbands(seg_slot, seg_lo, seg_hi, x, n, k, counts, vals, out):
    """vals[s] = [running total, then the sliding-variance block]; out: upper, middle, lower (middle = SMA)."""
    ring = 1 + SLIDE_HEAD
    for g in range(len(seg_slot)):
        s = seg_slot[g]
        c = counts[s]
        row = vals[s]
        i = c % n
        for r in range(seg_lo[g], seg_hi[g]):
            v = x[r]
            nxt = i + 1 if i + 1 < n else 0
            oldest = row[ring + nxt]  # leaves the SMA window after this bar (read before the push; n >= 2)
            var = _slide(row, 1, c, n, v, i)
            total = row[0] + v
            if c >= n - 1:
                middle = total / n
                total -= oldest
                width = (math.sqrt(var) if var > 0.0 else 0.0) * k
                out[r, 0], out[r, 1], out[r, 2] = middle + width, middle, middle - width
            else:
                out[r, 0], out[r, 1], out[r, 2] = math.nan, math.nan, math.nan
            row[0] = total
            i = nxt
            c += 1
        counts[s] = c


@njit(cache=True)
def atr(seg_slot, seg_lo, seg_hi, high, low, close, n, counts, vals, out):
    """vals[s] = [previous close, true-range sum then ATR]."""
    for g in range(len(seg_slot)):
        s = seg_slot[g]
        c = counts[s]
        prev, a = vals[s, 0], vals[s, 1]
        for r in range(seg_lo[g], seg_hi[g]):
            out[r] = math.nan
            if c > 0:
                tr = high[r] - low[r]
                up = abs(prev - high[r])
                if up > tr:
                    tr = up
                down = abs(prev - low[r])
                if down > tr:
                    tr = down
                if c < n:
                    a += tr
                elif c == n:
                    a += tr
                    a = a / n
                    out[r] = a
                else:
                    a *= n - 1
                    a += tr
                    a /= n
                    out[r] = a
            prev = close[r]
            c += 1
        vals[s, 0], vals[s, 1] = prev, a
        counts[s] = c


@njit(cache=True)
def obv(seg_slot, seg_lo, seg_hi, close, volume, counts, vals, out):
    """vals[s] = [OBV, previous close]."""
    for g in range(len(seg_slot)):
        s = seg_slot[g]
        c = counts[s]
        acc, prev = vals[s, 0], vals[s, 1]
        for r in range(seg_lo[g], seg_hi[g]):
            v = close[r]
            if c == 0:
                acc = volume[r]
            elif v > prev:
                acc += volume[r]
            elif v < prev:
                acc -= volume[r]
            out[r] = acc
            prev = v
            c += 1
        vals[s, 0], vals[s, 1] = acc, prev
        counts[s] = c


@njit(cache=True)
def logret_std(seg_slot, seg_lo, seg_hi, close, n, counts, vals, out_logret, out_std):
    """Log return and the population standard deviation of the last n log returns (TA-Lib STDDEV).

    vals[s] = [previous close, then the sliding-variance block of the log returns]; n = 0: log returns only.
    """
    for g in range(len(seg_slot)):
        s = seg_slot[g]
        c = counts[s]
        row = vals[s]
        prev = row[0]
        i = (c - 1) % n if n > 0 and c > 0 else 0  # ring position of the next log return
        for r in range(seg_lo[g], seg_hi[g]):
            v = close[r]
            out_logret[r] = math.nan
            out_std[r] = math.nan
            if c > 0:
                lr = math.log(v / prev)
                out_logret[r] = lr
                if n > 0:
                    var = _slide(row, 1, c - 1, n, lr, i)  # c - 1: the index of this log return
                    if c - 1 >= n - 1:
                        out_std[r] = math.sqrt(var) if var > 0.0 else 0.0
                    i = i + 1 if i + 1 < n else 0
            prev = v
            c += 1
        row[0] = prev
        counts[s] = c


@njit(cache=True)
def highest(seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
    """TA-Lib MAX: the largest of the last n inputs. vals[s] = [extreme, bar number of the extreme, ring of n]."""
    _extreme(seg_slot, seg_lo, seg_hi, x, n, counts, vals, out, 1.0)


@njit(cache=True)
def lowest(seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
    """TA-Lib MIN: the smallest of the last n inputs (same state layout as `highest`)."""
    _extreme(seg_slot, seg_lo, seg_hi, x, n, counts, vals, out, -1.0)


@njit(cache=True)
def _extreme(seg_slot, seg_lo, seg_hi, x, n, counts, vals, out, sign):
    """The running extreme of a window, amortised O(1): it is only rescanned when the extreme leaves the window.

    Comparing `sign * v` lets one loop serve both MAX (sign 1) and MIN (sign -1) without a branch per bar.
    """
    for g in range(len(seg_slot)):
        s = seg_slot[g]
        c = counts[s]
        row = vals[s]
        best, at = row[0], int(row[1])
        for r in range(seg_lo[g], seg_hi[g]):
            v = x[r]
            row[2 + c % n] = v
            if c == 0 or c - at >= n:  # first bar, or the extreme just left the window: rescan it
                lo = c - n + 1 if c >= n - 1 else 0
                best, at = row[2 + lo % n], lo
                for j in range(lo + 1, c + 1):
                    w = row[2 + j % n]
                    if sign * w >= sign * best:
                        best, at = w, j
            elif sign * v >= sign * best:
                best, at = v, c
            out[r] = best if c >= n - 1 else math.nan
            c += 1
        row[0], row[1] = best, at
        counts[s] = c


SLIDE_HEAD = 3  # anchor K, sum of (x - K), sum of (x - K)^2; then a ring of 2n values


@njit(cache=True)
def _slide(row, base, j, n, v, i):
    """Pushes value number j (ring position i = j % n) of a series; returns the population variance of the
    last n values once j >= n - 1.

    Layout at row[base:]: K, S1 = sum(x - K), S2 = sum((x - K)^2) over the window, then a ring of 2n where
    each value is written at i and i + n, so the window is always contiguous and in time order. Sums are
    slid in O(1) per value and re-anchored every n values (K = the window's mean, both sums recomputed in
    time order), so the terms stay at the scale of the window's spread and the variance stays accurate
    however far the series wanders. Every step depends only on the series, never on how it was batched.
    """
    ring = base + SLIDE_HEAD
    old = row[ring + i]  # value number j - n, leaving the window
    row[ring + i] = v
    row[ring + i + n] = v
    if j < n - 1:
        return 0.0
    if i == n - 1:  # anchor: the first full window (j = n - 1), then every n values
        first = ring
        total = 0.0
        for t in range(first, first + n):
            total += row[t]
        anchor = total / n
        s1 = 0.0
        s2 = 0.0
        for t in range(first, first + n):
            d = row[t] - anchor
            s1 += d
            s2 += d * d
        row[base], row[base + 1], row[base + 2] = anchor, s1, s2
    else:
        anchor = row[base]
        d_new = v - anchor
        d_old = old - anchor
        row[base + 1] += d_new - d_old
        row[base + 2] += d_new * d_new - d_old * d_old
    m1 = row[base + 1] / n
    return row[base + 2] / n - m1 * m1

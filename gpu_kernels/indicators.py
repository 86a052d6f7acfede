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


# The recursive kernels (EMA, RSI, ATR, OBV) are bound by the latency of each series' chain of dependent
# operations (a Wilder step is a multiply, an add and a divide in a row). They step two series side by side,
# bar for bar, so the core overlaps the two chains; each series still sees exactly its own operations in its
# own order, so the numbers are those of one series at a time, bit for bit. A lone segment (an odd one out,
# or two segments of the same series) pairs with nothing: its second lane is empty.


@njit(cache=True, inline="always")
def _paired(seg_slot, g):
    """1 if segment g can step beside segment g + 1 (another series), else 0."""
    return 1 if g + 1 < len(seg_slot) and seg_slot[g + 1] != seg_slot[g] else 0


@njit(cache=True, inline="always")
def _lanes(seg_lo, seg_hi, g, paired):
    """Rows of lane a [ra, ha) and lane b [rb, hb) (empty when unpaired) and the length they share."""
    ra, ha = seg_lo[g], seg_hi[g]
    if paired:
        rb, hb = seg_lo[g + 1], seg_hi[g + 1]
    else:
        rb, hb = ha, ha
    return ra, ha, rb, hb, min(ha - ra, hb - rb)


@njit(cache=True)
def sma(seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
    """vals[s] = [running total, ring of the last n inputs]."""
    for g in range(len(seg_slot)):
        s = seg_slot[g]
        c = counts[s]
        row = vals[s]
        i = c % n  # ring position of this bar; stepped, not divided, in the loop
        total = row[0]  # in a register through the loop: a store and reload per bar would chain the bars
        for r in range(seg_lo[g], seg_hi[g]):
            v = x[r]
            row[1 + i] = v
            total = total + v
            i += 1
            if i == n:
                i = 0
            if c >= n - 1:
                out[r] = total / n
                total -= row[1 + i]  # the oldest value in the window (n == 1: the one just written)
            else:
                out[r] = math.nan
            c += 1
        row[0] = total
        counts[s] = c


@njit(cache=True, inline="always")
def _ema_step(v, e, c, n, k):
    if c < n - 1:
        return math.nan, e + v
    if c == n - 1:
        e = (e + v) / n
        return e, e
    e = ((v - e) * k) + e
    return e, e


@njit(cache=True)
def ema(seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
    """vals[s] = [seed sum, then the EMA]."""
    k = 2.0 / (n + 1)
    g = 0
    while g < len(seg_slot):
        paired = _paired(seg_slot, g)
        a, b = seg_slot[g], seg_slot[g + paired]
        ra, ha, rb, hb, m = _lanes(seg_lo, seg_hi, g, paired)
        ca, cb = counts[a], counts[b]
        ea, eb = vals[a, 0], vals[b, 0]
        for j in range(m):  # two series side by side: their recursions overlap in the core
            out[ra + j], ea = _ema_step(x[ra + j], ea, ca + j, n, k)
            out[rb + j], eb = _ema_step(x[rb + j], eb, cb + j, n, k)
        for r in range(ra + m, ha):
            out[r], ea = _ema_step(x[r], ea, ca + r - ra, n, k)
        for r in range(rb + m, hb):
            out[r], eb = _ema_step(x[r], eb, cb + r - rb, n, k)
        vals[b, 0], counts[b] = eb, cb + hb - rb  # b first: unpaired, b is a and a's values must win
        vals[a, 0], counts[a] = ea, ca + ha - ra
        g += 1 + paired


@njit(cache=True, inline="always")
def _rsi_step(v, prev, gain, loss, c, n):
    if c == 0:
        return math.nan, v, gain, loss
    d = v - prev
    if c > n:
        loss *= n - 1
        gain *= n - 1
    if d < 0:
        loss -= d
    else:
        gain += d
    if c < n:
        return math.nan, v, gain, loss
    loss /= n
    gain /= n
    t = gain + loss
    return (0.0 if -_ZERO < t < _ZERO else 100.0 * (gain / t)), v, gain, loss


@njit(cache=True)
def rsi(seg_slot, seg_lo, seg_hi, x, n, counts, vals, out):
    """vals[s] = [previous input, average gain, average loss]."""
    g = 0
    while g < len(seg_slot):
        paired = _paired(seg_slot, g)
        a, b = seg_slot[g], seg_slot[g + paired]
        ra, ha, rb, hb, m = _lanes(seg_lo, seg_hi, g, paired)
        ca, cb = counts[a], counts[b]
        pa, ga, la = vals[a, 0], vals[a, 1], vals[a, 2]
        pb, gb, lb = vals[b, 0], vals[b, 1], vals[b, 2]
        for j in range(m):  # two series side by side: their Wilder recursions overlap in the core
            out[ra + j], pa, ga, la = _rsi_step(x[ra + j], pa, ga, la, ca + j, n)
            out[rb + j], pb, gb, lb = _rsi_step(x[rb + j], pb, gb, lb, cb + j, n)
        for r in range(ra + m, ha):
            out[r], pa, ga, la = _rsi_step(x[r], pa, ga, la, ca + r - ra, n)
        for r in range(rb + m, hb):
            out[r], pb, gb, lb = _rsi_step(x[r], pb, gb, lb, cb + r - rb, n)
        vals[b, 0], vals[b, 1], vals[b, 2], counts[b] = pb, gb, lb, cb + hb - rb  # b first (see ema)
        vals[a, 0], vals[a, 1], vals[a, 2], counts[a] = pa, ga, la, ca + ha - ra
        g += 1 + paired


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


@njit(cache=True, inline="always")
def _bb_step(row, v, c, n, k, i, total, anchor, s1, s2, out, r):
    ring = 1 + SLIDE_HEAD
    nxt = i + 1 if i + 1 < n else 0
    oldest = row[ring + nxt]  # leaves the SMA window after this bar (read before the push; n >= 2)
    var, anchor, s1, s2 = _slide(row, ring, c, n, v, i, anchor, s1, s2)
    total = total + v
    if c >= n - 1:
        middle = total / n
        total -= oldest
        width = (math.sqrt(var) if var > 0.0 else 0.0) * k
        out[r, 0], out[r, 1], out[r, 2] = middle + width, middle, middle - width
    else:
        out[r, 0], out[r, 1], out[r, 2] = math.nan, math.nan, math.nan
    return nxt, total, anchor, s1, s2


@njit(cache=True)
def bbands(seg_slot, seg_lo, seg_hi, x, n, k, counts, vals, out):
    """vals[s] = [running total, then the sliding-variance block]; out: upper, middle, lower (middle = SMA)."""
    g = 0
    while g < len(seg_slot):
        paired = _paired(seg_slot, g)
        a, b = seg_slot[g], seg_slot[g + paired]
        ra, ha, rb, hb, m = _lanes(seg_lo, seg_hi, g, paired)
        ca, cb = counts[a], counts[b]
        row_a, row_b = vals[a], vals[b]
        ia, ib = ca % n, cb % n
        ta, ka, s1a, s2a = row_a[0], row_a[1], row_a[2], row_a[3]
        tb, kb, s1b, s2b = row_b[0], row_b[1], row_b[2], row_b[3]
        for j in range(m):  # two series side by side
            ia, ta, ka, s1a, s2a = _bb_step(row_a, x[ra + j], ca + j, n, k, ia, ta, ka, s1a, s2a, out, ra + j)
            ib, tb, kb, s1b, s2b = _bb_step(row_b, x[rb + j], cb + j, n, k, ib, tb, kb, s1b, s2b, out, rb + j)
        for r in range(ra + m, ha):
            ia, ta, ka, s1a, s2a = _bb_step(row_a, x[r], ca + r - ra, n, k, ia, ta, ka, s1a, s2a, out, r)
        for r in range(rb + m, hb):
            ib, tb, kb, s1b, s2b = _bb_step(row_b, x[r], cb + r - rb, n, k, ib, tb, kb, s1b, s2b, out, r)
        row_b[0], row_b[1], row_b[2], row_b[3], counts[b] = tb, kb, s1b, s2b, cb + hb - rb  # b first (see ema)
        row_a[0], row_a[1], row_a[2], row_a[3], counts[a] = ta, ka, s1a, s2a, ca + ha - ra
        g += 1 + paired


@njit(cache=True, inline="always")
def _atr_step(h, lo, cl, prev, a, c, n):
    if c == 0:
        return math.nan, cl, a
    tr = h - lo
    up = abs(prev - h)
    if up > tr:
        tr = up
    down = abs(prev - lo)
    if down > tr:
        tr = down
    if c < n:
        return math.nan, cl, a + tr
    if c == n:
        a = (a + tr) / n
        return a, cl, a
    a *= n - 1
    a += tr
    a /= n
    return a, cl, a


@njit(cache=True)
def atr(seg_slot, seg_lo, seg_hi, high, low, close, n, counts, vals, out):
    """vals[s] = [previous close, true-range sum then ATR]."""
    g = 0
    while g < len(seg_slot):
        paired = _paired(seg_slot, g)
        a, b = seg_slot[g], seg_slot[g + paired]
        ra, ha, rb, hb, m = _lanes(seg_lo, seg_hi, g, paired)
        ca, cb = counts[a], counts[b]
        pa, aa = vals[a, 0], vals[a, 1]
        pb, ab = vals[b, 0], vals[b, 1]
        for j in range(m):  # two series side by side: their Wilder recursions overlap in the core
            out[ra + j], pa, aa = _atr_step(high[ra + j], low[ra + j], close[ra + j], pa, aa, ca + j, n)
            out[rb + j], pb, ab = _atr_step(high[rb + j], low[rb + j], close[rb + j], pb, ab, cb + j, n)
        for r in range(ra + m, ha):
            out[r], pa, aa = _atr_step(high[r], low[r], close[r], pa, aa, ca + r - ra, n)
        for r in range(rb + m, hb):
            out[r], pb, ab = _atr_step(high[r], low[r], close[r], pb, ab, cb + r - rb, n)
        vals[b, 0], vals[b, 1], counts[b] = pb, ab, cb + hb - rb  # b first (see ema)
        vals[a, 0], vals[a, 1], counts[a] = pa, aa, ca + ha - ra
        g += 1 + paired


@njit(cache=True, inline="always")
def _obv_step(v, vol, acc, prev, c):
    if c == 0:
        acc = vol
    elif v > prev:
        acc += vol
    elif v < prev:
        acc -= vol
    return acc, acc


@njit(cache=True)
def obv(seg_slot, seg_lo, seg_hi, close, volume, counts, vals, out):
    """vals[s] = [OBV, previous close]."""
    g = 0
    while g < len(seg_slot):
        paired = _paired(seg_slot, g)
        a, b = seg_slot[g], seg_slot[g + paired]
        ra, ha, rb, hb, m = _lanes(seg_lo, seg_hi, g, paired)
        ca, cb = counts[a], counts[b]
        acc_a, pa = vals[a, 0], vals[a, 1]
        acc_b, pb = vals[b, 0], vals[b, 1]
        for j in range(m):  # two series side by side
            out[ra + j], acc_a = _obv_step(close[ra + j], volume[ra + j], acc_a, pa, ca + j)
            pa = close[ra + j]
            out[rb + j], acc_b = _obv_step(close[rb + j], volume[rb + j], acc_b, pb, cb + j)
            pb = close[rb + j]
        for r in range(ra + m, ha):
            out[r], acc_a = _obv_step(close[r], volume[r], acc_a, pa, ca + r - ra)
            pa = close[r]
        for r in range(rb + m, hb):
            out[r], acc_b = _obv_step(close[r], volume[r], acc_b, pb, cb + r - rb)
            pb = close[r]
        vals[b, 0], vals[b, 1], counts[b] = acc_b, pb, cb + hb - rb  # b first (see ema)
        vals[a, 0], vals[a, 1], counts[a] = acc_a, pa, ca + ha - ra
        g += 1 + paired


@njit(cache=True)
def logret_std(seg_slot, seg_lo, seg_hi, close, n, counts, vals, out_logret, out_std):
    """Log return and the population standard deviation of the last n log returns (TA-Lib STDDEV).

    vals[s] = [previous close, then the sliding-variance block of the log returns]; n = 0: log returns only.
    (One series at a time: stepping two side by side, as the recursive kernels do, ran 3x slower here.)
    """
    for g in range(len(seg_slot)):
        s = seg_slot[g]
        c = counts[s]
        row = vals[s]
        prev = row[0]
        i = (c - 1) % n if n > 0 and c > 0 else 0  # ring position of the next log return
        anchor, s1, s2 = (row[1], row[2], row[3]) if n > 0 else (0.0, 0.0, 0.0)
        for r in range(seg_lo[g], seg_hi[g]):
            v = close[r]
            out_logret[r] = math.nan
            out_std[r] = math.nan
            if c > 0:
                lr = math.log(v / prev)
                out_logret[r] = lr
                if n > 0:  # c - 1: the index of this log return
                    var, anchor, s1, s2 = _slide(row, 1 + SLIDE_HEAD, c - 1, n, lr, i, anchor, s1, s2)
                    if c - 1 >= n - 1:
                        out_std[r] = math.sqrt(var) if var > 0.0 else 0.0
                    i = i + 1 if i + 1 < n else 0
            prev = v
            c += 1
        row[0] = prev
        if n > 0:
            row[1], row[2], row[3] = anchor, s1, s2
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


@njit(cache=True, inline="always")
def _slide(row, ring, j, n, v, i, anchor, s1, s2):
    """Pushes value number j (ring position i = j % n) of a series; returns the population variance of the
    last n values once j >= n - 1 (else 0.0), and the new anchor, S1, S2.

    State (a row's sliding-variance block, SLIDE_HEAD values then the ring at row[ring:]): K, S1 = sum(x - K),
    S2 = sum((x - K)^2) over the window, then a ring of 2n where each value is written at i and i + n, so the
    window is always contiguous and in time order. The caller keeps K, S1, S2 in locals through its loop
    (stored back once per segment: a store and reload per bar would chain the bars). Sums are slid in O(1)
    per value and re-anchored every n values (K = the window's mean, both sums recomputed in time order), so
    the terms stay at the scale of the window's spread and the variance stays accurate however far the
    series wanders. Every step depends only on the series, never on how it was batched.
    """
    old = row[ring + i]  # value number j - n, leaving the window
    row[ring + i] = v
    row[ring + i + n] = v
    if j < n - 1:
        return 0.0, anchor, s1, s2
    if i == n - 1:  # anchor: the first full window (j = n - 1), then every n values
        total = 0.0
        for t in range(ring, ring + n):
            total += row[t]
        anchor = total / n
        s1 = 0.0
        s2 = 0.0
        for t in range(ring, ring + n):
            d = row[t] - anchor
            s1 += d
            s2 += d * d
    else:
        d_new = v - anchor
        d_old = old - anchor
        s1 += d_new - d_old
        s2 += d_new * d_new - d_old * d_old
    m1 = s1 / n
    return s2 / n - m1 * m1, anchor, s1, s2

// The indicator kernels of gpu_kernels/indicators.py for the GPU: one thread per segment (one series' run of
// consecutive bars), continuing that series from its state row exactly as the CPU kernels do, operation for
// operation, so both give the same numbers (compiled without fused multiply-add on both sides).
//
// The same text is compiled twice: by CuPy (NVRTC) for the device, and by the host C++ compiler in the test
// suite, where each "thread" is run in turn, so the logic is checked against TA-Lib on machines without a GPU.
// The prelude (gpu_kernels/cuda_indicators.py) defines SQ_KERNEL, SQ_DEVICE, SQ_THREAD and SQ_NAN for each.
//
// Arguments: seg_slot, seg_lo, seg_hi, nseg: the segments (rows [lo, hi) continue series seg_slot);
// counts[slot]: bars seen; vals: the state rows, `width` doubles each; out: one value per row, or a row-major
// block of 3 per row (MACD, Bollinger bands).

#define SQ_SEGMENT                                    \
    long long g = SQ_THREAD;                          \
    if (g >= nseg) return;                            \
    long long s = seg_slot[g];                        \
    long long c = counts[s];                          \
    double* row = vals + s * width;

#define SQ_SEGMENT_ARGS                                                                  \
    const long long* seg_slot, const long long* seg_lo, const long long* seg_hi, long long nseg

// TA-Lib's zero test for RSI's gain + loss (TA_IS_ZERO).
#define SQ_ZERO 1e-14

// The sliding population variance of gpu_kernels/indicators.py `_slide`: at row[base:], the anchor K,
// S1 = sum(x - K), S2 = sum((x - K)^2) over the window, then a ring of 2n where each value sits at i and i + n.
SQ_DEVICE double sq_slide(double* row, long long base, long long j, long long n, double v, long long i) {
    long long ring = base + 3;
    double old = row[ring + i];
    row[ring + i] = v;
    row[ring + i + n] = v;
    if (j < n - 1) return 0.0;
    if (i == n - 1) {
        double total = 0.0;
        for (long long t = ring; t < ring + n; ++t) total += row[t];
        double anchor = total / n;
        double s1 = 0.0;
        double s2 = 0.0;
        for (long long t = ring; t < ring + n; ++t) {
            double d = row[t] - anchor;
            s1 += d;
            s2 += d * d;
        }
        row[base] = anchor;
        row[base + 1] = s1;
        row[base + 2] = s2;
    } else {
        double anchor = row[base];
        double d_new = v - anchor;
        double d_old = old - anchor;
        row[base + 1] += d_new - d_old;
        row[base + 2] += d_new * d_new - d_old * d_old;
    }
    double m1 = row[base + 1] / n;
    return row[base + 2] / n - m1 * m1;
}

SQ_KERNEL sq_sma(SQ_SEGMENT_ARGS, const double* x, long long n, long long* counts, double* vals, long long width,
                 double* out) {
    SQ_SEGMENT
    long long i = c % n;
    for (long long r = seg_lo[g]; r < seg_hi[g]; ++r) {
        double v = x[r];
        row[1 + i] = v;
        double total = row[0] + v;
        i += 1;
        if (i == n) i = 0;
        if (c >= n - 1) {
            out[r] = total / n;
            total -= row[1 + i];
        } else {
            out[r] = SQ_NAN;
        }
        row[0] = total;
        c += 1;
    }
    counts[s] = c;
}

SQ_KERNEL sq_ema(SQ_SEGMENT_ARGS, const double* x, long long n, long long* counts, double* vals, long long width,
                 double* out) {
    SQ_SEGMENT
    double k = 2.0 / (n + 1);
    double e = row[0];
    for (long long r = seg_lo[g]; r < seg_hi[g]; ++r) {
        double v = x[r];
        if (c < n - 1) {
            e += v;
            out[r] = SQ_NAN;
        } else if (c == n - 1) {
            e += v;
            e = e / n;
            out[r] = e;
        } else {
            e = ((v - e) * k) + e;
            out[r] = e;
        }
        c += 1;
    }
    row[0] = e;
    counts[s] = c;
}

SQ_KERNEL sq_rsi(SQ_SEGMENT_ARGS, const double* x, long long n, long long* counts, double* vals, long long width,
                 double* out) {
    SQ_SEGMENT
    double prev = row[0], gain = row[1], loss = row[2];
    for (long long r = seg_lo[g]; r < seg_hi[g]; ++r) {
        double v = x[r];
        if (c == 0) {
            prev = v;
            out[r] = SQ_NAN;
        } else {
            double d = v - prev;
            prev = v;
            if (c > n) {
                loss *= n - 1;
                gain *= n - 1;
            }
            if (d < 0) {
                loss -= d;
            } else {
                gain += d;
            }
            if (c >= n) {
                loss /= n;
                gain /= n;
                double t = gain + loss;
                out[r] = (-SQ_ZERO < t && t < SQ_ZERO) ? 0.0 : 100.0 * (gain / t);
            } else {
                out[r] = SQ_NAN;
            }
        }
        c += 1;
    }
    row[0] = prev;
    row[1] = gain;
    row[2] = loss;
    counts[s] = c;
}

SQ_KERNEL sq_macd(SQ_SEGMENT_ARGS, const double* x, long long fast, long long slow, long long signal,
                  long long* counts, double* vals, long long width, double* out) {
    SQ_SEGMENT
    double kf = 2.0 / (fast + 1);
    double ks = 2.0 / (slow + 1);
    double kg = 2.0 / (signal + 1);
    long long fast_from = slow - fast;
    double ef = row[0], es = row[1], eg = row[2];
    for (long long r = seg_lo[g]; r < seg_hi[g]; ++r) {
        double v = x[r];
        if (c < slow - 1) {
            es += v;
            if (c >= fast_from) ef += v;
        } else if (c == slow - 1) {
            es += v;
            es = es / slow;
            ef += v;
            ef = ef / fast;
        } else {
            es = ((v - es) * ks) + es;
            ef = ((v - ef) * kf) + ef;
        }
        double* o = out + 3 * r;
        o[0] = SQ_NAN;
        o[1] = SQ_NAN;
        o[2] = SQ_NAN;
        if (c >= slow - 1) {
            double m = ef - es;
            long long j = c - (slow - 1);
            if (j < signal - 1) {
                eg += m;
            } else {
                if (j == signal - 1) {
                    eg += m;
                    eg = eg / signal;
                } else {
                    eg = ((m - eg) * kg) + eg;
                }
                o[0] = m;
                o[1] = eg;
                o[2] = m - eg;
            }
        }
        c += 1;
    }
    row[0] = ef;
    row[1] = es;
    row[2] = eg;
    counts[s] = c;
}

SQ_KERNEL sq_bbands(SQ_SEGMENT_ARGS, const double* x, long long n, double k, long long* counts, double* vals,
                    long long width, double* out) {
    SQ_SEGMENT
    long long ring = 1 + 3;
    long long i = c % n;
    for (long long r = seg_lo[g]; r < seg_hi[g]; ++r) {
        double v = x[r];
        long long nxt = i + 1 < n ? i + 1 : 0;
        double oldest = row[ring + nxt];  // leaves the SMA window after this bar (read before the push)
        double var = sq_slide(row, 1, c, n, v, i);
        double total = row[0] + v;
        double* o = out + 3 * r;
        if (c >= n - 1) {
            double middle = total / n;
            total -= oldest;
            double w = (var > 0.0 ? sqrt(var) : 0.0) * k;
            o[0] = middle + w;
            o[1] = middle;
            o[2] = middle - w;
        } else {
            o[0] = SQ_NAN;
            o[1] = SQ_NAN;
            o[2] = SQ_NAN;
        }
        row[0] = total;
        i = nxt;
        c += 1;
    }
    counts[s] = c;
}

SQ_KERNEL sq_atr(SQ_SEGMENT_ARGS, const double* high, const double* low, const double* close, long long n,
                 long long* counts, double* vals, long long width, double* out) {
    SQ_SEGMENT
    double prev = row[0], a = row[1];
    for (long long r = seg_lo[g]; r < seg_hi[g]; ++r) {
        out[r] = SQ_NAN;
        if (c > 0) {
            double tr = high[r] - low[r];
            double up = fabs(prev - high[r]);
            if (up > tr) tr = up;
            double down = fabs(prev - low[r]);
            if (down > tr) tr = down;
            if (c < n) {
                a += tr;
            } else if (c == n) {
                a += tr;
                a = a / n;
                out[r] = a;
            } else {
                a *= n - 1;
                a += tr;
                a /= n;
                out[r] = a;
            }
        }
        prev = close[r];
        c += 1;
    }
    row[0] = prev;
    row[1] = a;
    counts[s] = c;
}

SQ_KERNEL sq_obv(SQ_SEGMENT_ARGS, const double* close, const double* volume, long long* counts, double* vals,
                 long long width, double* out) {
    SQ_SEGMENT
    double acc = row[0], prev = row[1];
    for (long long r = seg_lo[g]; r < seg_hi[g]; ++r) {
        double v = close[r];
        if (c == 0) {
            acc = volume[r];
        } else if (v > prev) {
            acc += volume[r];
        } else if (v < prev) {
            acc -= volume[r];
        }
        out[r] = acc;
        prev = v;
        c += 1;
    }
    row[0] = acc;
    row[1] = prev;
    counts[s] = c;
}

SQ_KERNEL sq_logret_std(SQ_SEGMENT_ARGS, const double* close, long long n, long long* counts, double* vals,
                        long long width, double* out_logret, double* out_std) {
    SQ_SEGMENT
    double prev = row[0];
    long long i = (n > 0 && c > 0) ? (c - 1) % n : 0;
    for (long long r = seg_lo[g]; r < seg_hi[g]; ++r) {
        double v = close[r];
        out_logret[r] = SQ_NAN;
        out_std[r] = SQ_NAN;
        if (c > 0) {
            double lr = log(v / prev);
            out_logret[r] = lr;
            if (n > 0) {
                double var = sq_slide(row, 1, c - 1, n, lr, i);
                if (c - 1 >= n - 1) out_std[r] = var > 0.0 ? sqrt(var) : 0.0;
                i = i + 1 < n ? i + 1 : 0;
            }
        }
        prev = v;
        c += 1;
    }
    row[0] = prev;
    counts[s] = c;
}

// TA-Lib MAX (sign 1) and MIN (sign -1) over the last n inputs; the window is rescanned only when its
// extreme leaves it. vals[s] = [extreme, bar number of the extreme, ring of n].
SQ_KERNEL sq_extreme(SQ_SEGMENT_ARGS, const double* x, long long n, double sign, long long* counts, double* vals,
                     long long width, double* out) {
    SQ_SEGMENT
    double best = row[0];
    long long at = (long long)row[1];
    for (long long r = seg_lo[g]; r < seg_hi[g]; ++r) {
        double v = x[r];
        row[2 + c % n] = v;
        if (c == 0 || c - at >= n) {
            long long lo = c >= n - 1 ? c - n + 1 : 0;
            best = row[2 + lo % n];
            at = lo;
            for (long long j = lo + 1; j < c + 1; ++j) {
                double w = row[2 + j % n];
                if (sign * w >= sign * best) {
                    best = w;
                    at = j;
                }
            }
        } else if (sign * v >= sign * best) {
            best = v;
            at = c;
        }
        out[r] = c >= n - 1 ? best : SQ_NAN;
        c += 1;
    }
    row[0] = best;
    row[1] = (double)at;
    counts[s] = c;
}

"""A backtest as a self-contained HTML page: the metrics table, equity and drawdown charts, per-symbol returns.

The charts are inline SVG drawn here (no plotting library to install, nothing fetched when the page opens),
so the file can be mailed or archived as is. Long curves are reduced to the minimum and maximum of each
pixel column, which keeps every peak and every drawdown trough visible.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np

from gpu_kernels.perf import drawdown_curve
from processors.backtest import BacktestOutcome, params_label
from schemas.records import BacktestCommand

MAX_ROWS = 20
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd")
WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 960, 300, 80, 20, 16, 36
_PCT = {"total_return", "cagr", "volatility", "max_drawdown", "win_rate", "exposure"}


def render_report(cmd: BacktestCommand, outcome: BacktestOutcome) -> str:
    results = outcome.results
    ranked = sorted(range(len(results)), key=lambda i: -_or(results[i].metrics.get("sharpe"), -math.inf))
    shown = ranked[:MAX_ROWS]
    charted = ranked[: len(COLORS)]
    ts = outcome.equity.index.to_numpy(dtype=np.int64)
    curves = outcome.equity.to_numpy().T[charted]
    drawdowns = drawdown_curve(curves, outcome.capital)
    labels = [params_label(results[i].params) or "default parameters" for i in charted]
    first, last = _date(int(ts[0])), _date(int(ts[-1]))
    lines = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Backtest {_e(cmd.job_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(cmd.strategy)} <small>{_e(cmd.job_id)}</small></h1>",
        f"<p>{len(cmd.universe)} symbols, {len(ts):,} {_e(cmd.interval)} bars from {first} to {last}; capital "
        f"{cmd.initial_capital:,.0f} split equally; fees {cmd.fees_bps:g} bps, slippage {cmd.slippage_bps:g} bps; "
        f"fills at {'the next open' if cmd.execution == 'next_open' else 'the close'}; "
        f"{cmd.direction.replace('_', ' ')}; "
        f"{len(results):,} parameter set{'s' if len(results) != 1 else ''} on {outcome.backend} in "
        f"{outcome.elapsed_s:.3f} s.</p>",
        "<h2>Metrics</h2>",
    ]
    if len(results) > MAX_ROWS:
        lines.append(f"<p class='note'>The {MAX_ROWS} parameter sets with the highest Sharpe ratio of "
                     f"{len(results):,}; the result file has them all.</p>")
    lines.append(_metrics_table([results[i] for i in shown], shown))
    lines += [
        "<h2>Equity</h2>", _chart(ts, curves, labels, lambda v: f"{v:,.0f}"),
        "<h2>Drawdown</h2>", _chart(ts, drawdowns, labels, lambda v: f"{v:.0%}", fill=True),
        f"<h2>Per symbol <small>{_e(labels[0])}</small></h2>", _symbol_table(results[charted[0]].per_symbol),
        "</body></html>",
    ]
    return "\n".join(lines)


def _metrics_table(rows: Sequence, indices: Sequence[int]) -> str:
    names = list(rows[0].metrics) if rows else []
    head = "<th>set</th><th class='l'>parameters</th>" + "".join(f"<th>{_e(n.replace('_', ' '))}</th>" for n in names)
    body = []
    for i, r in zip(indices, rows, strict=True):
        cells = "".join(f"<td>{_fmt(n, r.metrics[n])}</td>" for n in names)
        body.append(f"<tr><td>{i}</td><td class='l'>{_e(params_label(r.params))}</td>{cells}</tr>")
    return f"<div class='wide'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _symbol_table(per_symbol: dict[str, dict[str, float | None]]) -> str:
    items = sorted(per_symbol.items(), key=lambda kv: -_or(kv[1].get("total_return"), -math.inf))
    if len(items) > 2 * MAX_ROWS:
        note = f"<p class='note'>The best and worst {MAX_ROWS // 2} of {len(items)} symbols.</p>"
        items = items[: MAX_ROWS // 2] + items[-(MAX_ROWS // 2):]
    else:
        note = ""
    body = "".join(f"<tr><td class='l'>{_e(s)}</td><td>{_fmt('total_return', v.get('total_return'))}</td>"
                   f"<td>{_fmt('trades', v.get('trades'))}</td></tr>" for s, v in items)
    return f"{note}<table><tr><th>symbol</th><th>total return</th><th>trades</th></tr>{body}</table>"


def _chart(ts: np.ndarray, series: np.ndarray, labels: Sequence[str], fmt: Callable[[float], str],
           fill: bool = False) -> str:
    """A line chart (one line per row of `series`) as inline SVG, with value and date axes and a legend."""
    x0, x1 = float(ts[0]), float(ts[-1]) if ts[-1] > ts[0] else float(ts[0]) + 1.0
    lo, hi = float(np.nanmin(series)), float(np.nanmax(series))
    if fill:
        hi = 0.0
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    ticks = _nice_ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B

    def px(t: np.ndarray) -> np.ndarray:
        return PAD_L + (t - x0) / (x1 - x0) * plot_w

    def py(v: np.ndarray) -> np.ndarray:
        return PAD_T + (hi - v) / (hi - lo) * plot_h

    out = [f"<svg viewBox='0 0 {WIDTH} {HEIGHT}' width='{WIDTH}' height='{HEIGHT}' role='img'>"]
    for v in ticks:
        y = float(py(np.array(v)))
        out.append(f"<line x1='{PAD_L}' x2='{WIDTH - PAD_R}' y1='{y:.1f}' y2='{y:.1f}' class='grid'/>"
                   f"<text x='{PAD_L - 6}' y='{y + 4:.1f}' text-anchor='end'>{_e(fmt(v))}</text>")
    for j, i in enumerate(np.linspace(0, len(ts) - 1, 6).round().astype(int)):  # dates of real bars
        anchor = "start" if j == 0 else "end" if j == 5 else "middle"
        out.append(f"<text x='{float(px(np.array(float(ts[i])))):.1f}' y='{HEIGHT - 12}' "
                   f"text-anchor='{anchor}'>{_date(int(ts[i]))}</text>")
    for k in range(len(series) - 1, -1, -1):  # the best set (row 0) drawn last, on top
        color = COLORS[k]
        tx, vy = _reduce(px(ts.astype(np.float64)), py(series[k]), plot_w)
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(tx, vy, strict=True))
        if fill and k == 0:  # shade the best set's drawdown only: several fills would muddy each other
            base = float(py(np.array(0.0)))
            out.append(f"<polygon points='{tx[0]:.1f},{base:.1f} {points} {tx[-1]:.1f},{base:.1f}' "
                       f"fill='{color}' fill-opacity='0.18' stroke='none'/>")
        width = 1.8 if k == 0 else 1.1
        out.append(f"<polyline points='{points}' fill='none' stroke='{color}' stroke-width='{width}'/>")
    out.append("</svg>")
    legend = "".join(f"<span><i style='background:{c}'></i>{_e(label)}</span>"
                     for label, c in zip(labels, COLORS, strict=False))
    return f"<div class='legend'>{legend}</div>" + "".join(out)


def _reduce(x: np.ndarray, y: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """At most two points (min and max, in time order) per pixel column."""
    if len(x) <= 2 * columns:
        return x, y
    bucket = np.minimum(((x - x[0]) / max(x[-1] - x[0], 1e-9) * columns).astype(np.int64), columns - 1)
    keep = np.zeros(len(x), dtype=bool)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(x)], strict=True):
        seg = y[a:b]
        keep[a + int(np.nanargmin(seg))] = keep[a + int(np.nanargmax(seg))] = True
    return x[keep], y[keep]


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(math.ceil((hi - first) / step - 1e-9) + 1)]


def _fmt(name: str, v: float | None) -> str:
    if v is None:
        return "–"
    if name == "trades":
        return f"{int(v):,}"
    if name in _PCT:
        return f"{v:.2%}"
    return f"{v:.3f}"


def _or(v: float | None, default: float) -> float:
    return default if v is None else v


def _date(ms: int) -> str:
    when = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return when.strftime("%Y-%m-%d") if when.hour == when.minute == 0 else when.strftime("%Y-%m-%d %H:%M")


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1000px; color: #222; }
h1 small, h2 small { color: #777; font-weight: normal; font-size: 60%; }
table { border-collapse: collapse; margin: 8px 0 20px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th { background: #f5f5f5; } td.l, th.l { text-align: left; }
.note { color: #666; font-size: 90%; }
.wide { overflow-x: auto; } .wide table { font-size: 12px; } .wide th { white-space: normal; }
.legend { font-size: 12px; color: #444; } .legend span { margin-right: 14px; white-space: nowrap; }
.legend i { display: inline-block; width: 14px; height: 3px; margin: 0 5px 3px 0; vertical-align: middle; }
svg text { font-size: 11px; fill: #555; } svg .grid { stroke: #e8e8e8; }
"""

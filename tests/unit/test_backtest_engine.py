"""The vectorized backtest engine against a slow, obvious per-bar loop written only for this test.

Random prices with halted bars (NaN close or open), symbols listed late and delisted early, random target
positions (including "keep"), fees and slippage; both execution modes, both directions, several parameter
sets per run. Equity at every bar, per-symbol results and the trade statistics must agree to 1e-12.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from gpu_kernels import backtest as kernel
from gpu_kernels.perf import running_max
from processors import backtest as bt
from processors.indicator_bank import Indicators
from processors.strategies import STRATEGIES, Params, ParamSpec, register_strategy
from schemas.records import BacktestCommand, DataSource

TARGETS: list[np.ndarray] = []  # (T, S) target panels the test strategy hands to the engine


if "test_targets" not in STRATEGIES:
    @register_strategy("test_targets", params=[ParamSpec.integer("which", 0, 0, 1000)])
    def _test_targets(ind: Indicators, p: Params) -> object:
        return ind.xp.stack([ind.panel(TARGETS[int(w)]) for w in p["which"]])


@dataclass
class Sleeve:
    """One symbol's account in the reference: cash, signed position, units held."""

    cash: float
    position: int = 0
    units: float = 0.0
    value_at_entry: float = 0.0
    trades: int = 0
    closed: int = 0
    wins: int = 0
    history: list[float] = field(default_factory=list)


def reference(target: np.ndarray, open_: np.ndarray, close: np.ndarray, tradable: np.ndarray, capital: float,
              fee: float, slip: float, next_open: bool, long_short: bool) -> dict[str, object]:
    """Bar by bar, symbol by symbol, the model as the docs state it."""
    rows, symbols = close.shape
    sleeves = [Sleeve(capital / symbols) for _ in range(symbols)]
    traded = 0.0
    held = 0

    def fill(sl: Sleeve, new: int, price: float) -> None:
        nonlocal traded
        if new == sl.position:
            return
        if sl.position != 0:  # close the position
            px = price * (1 - sl.position * slip)
            sl.cash += sl.position * sl.units * px - sl.units * px * fee
            traded += sl.units * px
            sl.closed += 1
            sl.wins += sl.cash > sl.value_at_entry
            sl.position, sl.units = 0, 0.0
        if new != 0 and sl.cash > 0:  # all in
            px = price * (1 + new * slip)
            sl.value_at_entry = sl.cash
            sl.units = sl.cash / (px * (1 + fee))
            sl.cash -= new * sl.units * px + sl.units * px * fee
            traded += sl.units * px
            sl.position = new
            sl.trades += 1

    for s, sl in enumerate(sleeves):
        desired, pending, mark = 0, None, 0.0
        for t in range(rows):
            if tradable[t, s]:
                if pending is not None:
                    fill(sl, pending, open_[t, s])
                    pending = None
                x = target[t, s]
                if not math.isnan(x):
                    desired = int(np.sign(x)) if long_short else max(int(np.sign(x)), 0)
                if next_open:
                    pending = desired
                else:
                    fill(sl, desired, close[t, s])
                mark = close[t, s]
            sl.history.append(sl.cash + (sl.position * sl.units * mark if sl.position else 0.0))
            held += sl.position != 0
    equity = np.sum([sl.history for sl in sleeves], axis=0)
    return {"equity": equity, "final": np.array([sl.history[-1] for sl in sleeves]),
            "trades": np.array([sl.trades for sl in sleeves]), "closed": sum(sl.closed for sl in sleeves),
            "wins": sum(sl.wins for sl in sleeves), "traded": traded, "exposure": held / (rows * symbols)}


def random_market(seed: int, rows: int, symbols: int) -> bt.BarPanel:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, (rows, symbols)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.01, (rows, symbols)))
    close[rng.random((rows, symbols)) < 0.08] = np.nan  # halted bars
    open_[rng.random((rows, symbols)) < 0.03] = np.nan  # a bar without an opening print cannot trade either
    close[: rows // 4, 0] = np.nan  # listed late
    if symbols > 2:
        close[-rows // 5 :, 2] = np.nan  # delisted early
    ts = 1_600_000_000_000 + np.arange(rows, dtype=np.int64) * 86_400_000
    high, low = np.fmax(open_, close) * 1.01, np.fmin(open_, close) * 0.99
    names = tuple(f"S{i}" for i in range(symbols))
    return bt.BarPanel(ts, open_, high, low, close, np.full((rows, symbols), 1e4), names)


def command(**kw: object) -> BacktestCommand:
    base: dict[str, object] = dict(job_id="t", strategy="test_targets", universe=("S0", "S1", "S2", "S3"),
                                   start="2020-01-01", end="2020-12-31", data=DataSource("synthetic"))
    base.update(kw)
    return BacktestCommand(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("execution", ["close", "next_open"])
@pytest.mark.parametrize("direction", ["long_only", "long_short"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engine_matches_the_per_bar_loop(execution: str, direction: str, seed: int) -> None:
    rows, symbols, sets = 150, 4, 5
    bars = random_market(seed, rows, symbols)
    rng = np.random.default_rng(seed + 100)
    TARGETS[:] = [rng.choice([-1.0, 0.0, 1.0, np.nan], p=[0.15, 0.1, 0.15, 0.6], size=(rows, symbols))
                  for _ in range(sets)]
    TARGETS[1] = np.where(np.isnan(TARGETS[1]), 0.5, TARGETS[1])  # any positive number means long
    cmd = command(params={"which": list(range(sets))}, fees_bps=12.5, slippage_bps=4, execution=execution,
                  direction=direction, initial_capital=50_000)
    out = bt.run_backtest(cmd, bars, chunk_cells=2 * symbols * rows)  # several chunks
    for i, result in enumerate(out.results):
        want = reference(TARGETS[i], bars.open, bars.close, bars.tradable, 50_000.0, 12.5e-4, 4e-4,
                         execution == "next_open", direction == "long_short")
        np.testing.assert_allclose(out.equity[i].to_numpy(), want["equity"], rtol=1e-12)
        got_final = [result.per_symbol[s]["total_return"] for s in bars.symbols]
        np.testing.assert_allclose(got_final, np.asarray(want["final"]) / 12_500 - 1, rtol=1e-12, atol=1e-13)
        assert [result.per_symbol[s]["trades"] for s in bars.symbols] == list(want["trades"])  # type: ignore[call-overload]
        m = result.metrics
        assert m["trades"] == sum(want["trades"])  # type: ignore[call-overload]
        closed = want["closed"]
        assert m["win_rate"] == (pytest.approx(want["wins"] / closed, rel=1e-12) if closed else None)  # type: ignore[operator]
        assert m["exposure"] == pytest.approx(want["exposure"], rel=1e-12)
        assert m["turnover"] == pytest.approx(want["traded"] / np.mean(want["equity"]), rel=1e-12)  # type: ignore[call-overload]
        assert m["total_return"] == pytest.approx(want["equity"][-1] / 50_000 - 1, rel=1e-12, abs=1e-14)  # type: ignore[index]


@pytest.mark.parametrize("execution", ["close", "next_open"])
def test_a_wiped_out_short_opens_nothing_more(execution: str) -> None:
    rows = 40
    price = np.r_[np.linspace(100, 320, 20), np.linspace(320, 90, 20)][:, None].repeat(2, axis=1)
    ts = 1_600_000_000_000 + np.arange(rows, dtype=np.int64) * 86_400_000
    bars = bt.BarPanel(ts, price.copy(), price * 1.01, price * 0.99, price.copy(), np.ones((rows, 2)), ("S0", "S1"))
    target = np.full((rows, 2), np.nan)
    target[0], target[15], target[17], target[25], target[30] = -1, 0, 1, -1, 0
    TARGETS[:] = [target]
    cmd = command(universe=("S0", "S1"), direction="long_short", execution=execution, fees_bps=10, slippage_bps=10)
    out = bt.run_backtest(cmd, bars)
    want = reference(target, price, price, bars.tradable, 100_000.0, 1e-3, 1e-3, execution == "next_open", True)
    assert want["equity"][-1] < 0  # type: ignore[index]  # the squeeze took more than the sleeve had
    np.testing.assert_allclose(out.equity[0].to_numpy(), want["equity"], rtol=1e-12)
    assert out.results[0].metrics["trades"] == 2 == sum(want["trades"])  # type: ignore[call-overload]


def test_a_symbol_without_a_single_bar_keeps_its_capital() -> None:
    bars = random_market(6, 80, 4)
    bars.close[:, 3] = np.nan
    rng = np.random.default_rng(6)
    TARGETS[:] = [rng.choice([-1.0, 1.0, np.nan], size=(80, 4)) for _ in range(2)]
    for execution in ("close", "next_open"):
        cmd = command(params={"which": [0, 1]}, direction="long_short", execution=execution, fees_bps=5)
        out = bt.run_backtest(cmd, bars)
        for i, result in enumerate(out.results):
            want = reference(TARGETS[i], bars.open, bars.close, bars.tradable, 100_000.0, 5e-4, 0.0,
                             execution == "next_open", True)
            np.testing.assert_allclose(out.equity[i].to_numpy(), want["equity"], rtol=1e-12)
            assert result.per_symbol["S3"] == {"total_return": 0.0, "trades": 0}


def test_chunking_does_not_change_results() -> None:
    bars = random_market(9, 120, 4)
    rng = np.random.default_rng(9)
    TARGETS[:] = [rng.choice([-1.0, 1.0, np.nan], size=(120, 4)) for _ in range(7)]
    cmd = command(params={"which": list(range(7))}, direction="long_short", fees_bps=5)
    whole = bt.run_backtest(cmd, bars)
    progress: list[float] = []
    pieces = bt.run_backtest(cmd, bars, chunk_cells=1, progress=progress.append)
    assert progress == pytest.approx([(i + 1) / 7 for i in range(7)])
    assert whole.results == pieces.results
    assert whole.equity.equals(pieces.equity)


def test_should_stop_stops_between_chunks() -> None:
    bars = random_market(4, 60, 4)
    TARGETS[:] = [np.ones((60, 4))] * 3
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 1

    with pytest.raises(bt.BacktestStopped):
        bt.run_backtest(command(params={"which": [0, 1, 2]}), bars, chunk_cells=1, should_stop=stop)


def test_gpu_backend_without_cupy_is_a_clear_error() -> None:
    try:
        import cupy  # noqa: F401
    except ImportError:
        TARGETS[:] = [np.ones((30, 4))]
        with pytest.raises(bt.BackendUnavailable, match="CuPy"):
            bt.run_backtest(command(), random_market(1, 30, 4), backend="gpu")
        assert bt.run_backtest(command(), random_market(1, 30, 4), backend="auto").backend == "cpu"
    else:
        pytest.skip("CuPy is installed: test_cpu_and_gpu_agree covers the GPU")


@pytest.mark.parametrize("strategy", ["trend_following", "breakout", "mean_reversion"])
def test_cpu_and_gpu_agree(strategy: str) -> None:
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no GPU visible")
    bars = random_market(21, 300, 6)
    cmd = command(strategy=strategy, universe=bars.symbols, direction="long_short", execution="next_open",
                  fees_bps=10, params={"window": [10, 20]} if strategy != "trend_following" else {"fast": [5, 8]})
    cpu, gpu = bt.run_backtest(cmd, bars), bt.run_backtest(cmd, bars, backend="gpu")
    assert gpu.backend == "gpu"
    np.testing.assert_allclose(gpu.equity.to_numpy(), cpu.equity.to_numpy(), rtol=1e-9)
    for a, b in zip(cpu.results, gpu.results, strict=True):
        assert a.params == b.params
        for name, value in a.metrics.items():
            assert b.metrics[name] == (None if value is None else pytest.approx(value, rel=1e-9, abs=1e-12)), name


def test_gpu_gather_spread_equals_the_cpu_repeat() -> None:
    rng = np.random.default_rng(0)
    change = rng.random((6, 50)) < 0.2
    change[:, 0] = True
    ev = np.flatnonzero(change)
    values = rng.normal(size=len(ev))
    assert np.array_equal(kernel._spread(values, ev, change), kernel._spread(values, ev, change, by_gather=True))


def test_forward_fill_and_running_max_match_plain_numpy() -> None:
    rng = np.random.default_rng(2)
    x = np.where(rng.random((3, 4, 30)) < 0.6, np.nan, rng.normal(size=(3, 4, 30)))
    got = kernel.forward_fill(x, 0.0)
    for idx in np.ndindex(3, 4):
        row, last = x[idx], 0.0
        want = []
        for v in row:
            last = last if math.isnan(v) else v
            want.append(last)
        assert np.array_equal(got[idx], want)
    assert np.isnan(kernel.forward_fill(np.array([[np.nan, 1.0, np.nan]]))[0, 0])
    y = rng.normal(size=(5, 37))
    assert np.array_equal(running_max(y), np.maximum.accumulate(y, axis=1))


def test_bar_sequences_pack_each_symbols_tradable_bars_in_order() -> None:
    tradable = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 1], [1, 0, 0]], dtype=bool)
    seq = kernel.bar_sequences(tradable)
    panel = np.arange(12, dtype=np.float64).reshape(4, 3)
    packed = seq.pack(panel, fill=-1.0)
    assert packed.tolist() == [[0.0, 6.0, 9.0], [-1.0, -1.0, -1.0], [5.0, 8.0, 8.0]]
    assert seq.counts.tolist() == [3, 0, 2] and seq.padded and not seq.identity

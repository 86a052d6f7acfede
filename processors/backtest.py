"""The backtest engine: check a `BacktestCommand`, load its bars, run its strategy over every parameter set,
and turn the outcome into a result record and a Parquet artifact.

The offline CLI (`streamquant backtest run`) and the job plane call the same functions here, so a job and
an offline run of one command give the same numbers. The simulation itself is the `gpu_kernels.backtest`
kernel, on NumPy (`backend="cpu"`) or CuPy (`"gpu"`); parameter sets run in chunks sized so that memory
stays bounded however large the grid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gpu_kernels.backtest import Fills, bar_sequences, simulate
from gpu_kernels.perf import equity_metrics
from processors.backtest_data import (
    DATA_LOADERS,
    BarPanel,
    check_request,
    check_symbols,
    estimated_bars,
    periods_per_year,
)
from processors.errors import BackendUnavailable, BacktestStopped, InvalidCommand, ProcessorError
from processors.indicator_bank import Indicators
from processors.strategies import get_strategy
from schemas.records import BacktestCommand, BacktestResult, ParamSetResult
from schemas.spec import to_dict

__all__ = [
    "DATA_LOADERS",
    "BackendUnavailable",
    "BacktestOutcome",
    "BacktestStopped",
    "BarPanel",
    "InvalidCommand",
    "load_bars",
    "result_record",
    "run_backtest",
    "validate",
    "write_artifact",
]

MAX_PANEL_CELLS = 20_000_000  # bars × symbols of one run (estimated from the period before loading)
MAX_WORK_CELLS = 5_000_000_000  # bars × symbols × parameter sets
# Cells (parameter sets × symbols × bars) per chunk: a few dozen MB per array on the CPU, more on a GPU.
CHUNK_CELLS = {"cpu": 1 << 19, "gpu": 1 << 26}
METRICS = ("total_return", "cagr", "volatility", "sharpe", "sortino", "max_drawdown", "calmar", "trades",
           "win_rate", "exposure", "turnover")
RESULT_MAX_BYTES = 900_000  # under Kafka's default 1 MB message limit


@dataclass(frozen=True)
class BacktestOutcome:
    """Everything a run produced: one result per parameter set, and the equity curves (column i = set i)."""

    results: list[ParamSetResult]
    equity: pd.DataFrame  # index: bar ts (epoch ms, name "ts"); columns: parameter-set index
    backend: str
    capital: float
    periods_per_year: float
    elapsed_s: float


# ---------------------------------------------------------------------------------------------- checks


def validate(cmd: BacktestCommand) -> None:
    """Raises InvalidCommand (one-line reason) for anything wrong that can be seen without reading data."""
    sets = get_strategy(cmd.strategy).param_sets(cmd.params)
    check_request(cmd)
    if not cmd.initial_capital > 0:
        raise InvalidCommand("initial_capital must be positive")
    if not (0 <= cmd.fees_bps < 10_000 and 0 <= cmd.slippage_bps < 10_000):
        raise InvalidCommand("fees_bps and slippage_bps must be at least 0 and below 10000 (100%)")
    if cmd.execution not in ("close", "next_open") or cmd.direction not in ("long_only", "long_short"):
        raise InvalidCommand("execution must be close or next_open, direction long_only or long_short")
    bars = estimated_bars(cmd)
    cells = bars * len(cmd.universe)
    if cells > MAX_PANEL_CELLS:
        raise InvalidCommand(f"the period holds up to {bars:,} {cmd.interval} bars × {len(cmd.universe)} symbols; "
                             f"at most {MAX_PANEL_CELLS:,} bar-symbol cells per run")
    if cells * len(sets) > MAX_WORK_CELLS:
        raise InvalidCommand(f"{len(sets):,} parameter sets × {cells:,} bar-symbol cells is too much work for one "
                             f"run (at most {MAX_WORK_CELLS:,}); split the grid or the period")


def load_bars(cmd: BacktestCommand) -> BarPanel:
    """The command's bars from its data source; InvalidCommand for unreadable sources, unknown symbols, no data."""
    loader = DATA_LOADERS.get(cmd.data.source)
    if loader is None:
        raise InvalidCommand(f"data source {cmd.data.source!r} is not available here")
    panel = loader(cmd)
    check_symbols(cmd, panel)
    return panel


# ---------------------------------------------------------------------------------------------- run


def run_backtest(cmd: BacktestCommand, bars: BarPanel, *, backend: str = "cpu",
                 progress: Callable[[float], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 chunk_cells: int | None = None) -> BacktestOutcome:
    """Runs every parameter set of `cmd` over `bars`. backend: "cpu" (NumPy), "gpu" (CuPy; BackendUnavailable
    if it cannot be used) or "auto" (the GPU when usable). `progress` gets the fraction done after each chunk;
    `should_stop` is asked before each chunk and a True raises BacktestStopped."""
    started = time.perf_counter()
    if len(bars.ts) == 0 or not bars.symbols:
        raise InvalidCommand("there are no bars to backtest")
    strategy = get_strategy(cmd.strategy)
    sets = strategy.param_sets(cmd.params)
    xp, used = _array_module(backend)
    seq = bar_sequences(bars.tradable)
    columns = {name: getattr(bars, name) for name in ("open", "high", "low", "close", "volume")}
    ind = Indicators(columns, seq, xp)
    dev_seq = seq.on(xp)
    n_sym, length = seq.symbols, seq.length
    capital = cmd.initial_capital / n_sym
    fills = Fills(fee=cmd.fees_bps / 1e4, slippage=cmd.slippage_bps / 1e4,
                  next_open=cmd.execution == "next_open", long_short=cmd.direction == "long_short")
    ppy = periods_per_year(cmd.interval, bars.ts)
    per_chunk = max(1, (chunk_cells or CHUNK_CELLS[used]) // (n_sym * length))
    n_sets = len(sets)
    equity = np.empty((n_sets, len(bars.ts)))
    final, entries, exits, wins = (np.empty((n_sets, n_sym)) for _ in range(4))
    notional, exposure = np.empty(n_sets), np.empty(n_sets)
    metrics: dict[str, np.ndarray] = {}
    try:
        for lo in range(0, n_sets, per_chunk):
            if should_stop is not None and should_stop():
                raise BacktestStopped(f"stopped after {lo} of {n_sets} parameter sets")
            hi = min(lo + per_chunk, n_sets)
            params = {spec.name: np.array([s[spec.name] for s in sets[lo:hi]]) for spec in strategy.params}
            target = xp.broadcast_to(xp.asarray(strategy.signal(ind, params)), (hi - lo, n_sym, length))
            sim = simulate(target, ind.open if fills.next_open else ind.close, ind.close, dev_seq, capital, fills)
            for name, values in equity_metrics(sim.equity, cmd.initial_capital, ppy).items():
                metrics.setdefault(name, np.empty(n_sets))[lo:hi] = _host(values)
            equity[lo:hi] = _host(sim.equity)
            for dst, src in ((final, sim.final), (entries, sim.entries), (exits, sim.exits), (wins, sim.wins)):
                dst[lo:hi] = _host(src)
            notional[lo:hi], exposure[lo:hi] = _host(sim.notional), _host(sim.exposure)
            if progress is not None:
                progress(hi / n_sets)
    except _gpu_errors() as err:
        raise BackendUnavailable(f"GPU error: {err}") from err
    closed = exits.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        metrics["trades"] = entries.sum(axis=1)
        metrics["win_rate"] = np.where(closed > 0, wins.sum(axis=1) / np.maximum(closed, 1), np.nan)
        metrics["exposure"] = exposure
        metrics["turnover"] = notional / equity.mean(axis=1)
    returns = np.where(np.isfinite(final), final / capital - 1.0, np.nan).tolist()
    counts = entries.astype(np.int64).tolist()
    results = [
        ParamSetResult(
            params=dict(s),
            metrics={name: _number(metrics[name][i], name == "trades") for name in METRICS},
            per_symbol={sym: {"total_return": r if r == r else None, "trades": n}  # r != r: NaN
                        for sym, r, n in zip(bars.symbols, returns[i], counts[i], strict=True)},
        )
        for i, s in enumerate(sets)
    ]
    frame = pd.DataFrame(equity.T, index=pd.Index(bars.ts, name="ts"), columns=range(n_sets))
    return BacktestOutcome(results, frame, used, cmd.initial_capital, ppy, time.perf_counter() - started)


def _array_module(backend: str) -> tuple[ModuleType, str]:
    if backend == "cpu":
        return np, "cpu"
    if backend not in ("gpu", "auto"):
        raise ValueError(f"unknown backend {backend!r} (cpu, gpu or auto)")
    try:
        import cupy
    except ImportError:
        if backend == "auto":
            return np, "cpu"
        raise BackendUnavailable("backend gpu: CuPy is not installed (the `gpu` extra)") from None
    try:
        devices = int(cupy.cuda.runtime.getDeviceCount())
    except cupy.cuda.runtime.CUDARuntimeError as err:
        devices, reason = 0, str(err)
    else:
        reason = "no CUDA device is visible"
    if devices < 1:
        if backend == "auto":
            return np, "cpu"
        raise BackendUnavailable(f"backend gpu: {reason}")
    return cupy, "gpu"


def _gpu_errors() -> tuple[type[BaseException], ...]:
    """CuPy's device errors (memory, runtime, driver), or none when CuPy is not installed."""
    try:
        import cupy
    except ImportError:
        return ()
    return (cupy.cuda.memory.OutOfMemoryError, cupy.cuda.runtime.CUDARuntimeError, cupy.cuda.driver.CUDADriverError)


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _number(v: float, whole: bool = False) -> float | None:
    """A metric as JSON will carry it: NaN and infinities (undefined) become null, counts become ints."""
    if not np.isfinite(v):
        return None
    return round(float(v)) if whole else float(v)


# ---------------------------------------------------------------------------------------------- outputs


def write_artifact(outcome: BacktestOutcome, root: str, job_id: str) -> str:
    """Writes `<root>/<job_id>/` with equity.parquet (param_set, ts, equity), results.parquet (one row per
    parameter set: its parameters and metrics) and per_symbol.parquet; returns that folder's reference.

    `root` is a local path or a URI (s3://, gs://, hdfs://... through pyarrow; any fsspec scheme when fsspec
    is installed). Each file is written under a temporary name and then renamed, so a reader never sees half.
    """
    fs, base = _filesystem(root)
    folder = f"{base.rstrip('/')}/{job_id}"
    try:
        fs.create_dir(folder, recursive=True)
        for name, table in _artifact_tables(outcome).items():
            tmp = f"{folder}/{name}.parquet.tmp"
            pq.write_table(table, tmp, filesystem=fs)
            fs.move(tmp, f"{folder}/{name}.parquet")
    except (OSError, pa.ArrowException) as err:
        raise ProcessorError(f"cannot write the backtest artifact under {root}: {err}") from None
    return folder if "://" not in root else f"{root.rstrip('/')}/{job_id}"


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in root:
        return pafs.LocalFileSystem(), os.path.abspath(root)
    try:
        return pafs.FileSystem.from_uri(root)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        try:
            import fsspec
        except ImportError:
            raise ProcessorError(f"artifact root {root}: {err} (installing fsspec adds more schemes)") from None
        fs, path = fsspec.core.url_to_fs(root)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _artifact_tables(outcome: BacktestOutcome) -> dict[str, pa.Table]:
    eq = outcome.equity
    n_sets, bars = eq.shape[1], eq.shape[0]
    ts = pa.array(np.tile(eq.index.to_numpy(dtype=np.int64), n_sets), pa.int64()).cast(pa.timestamp("ms", "UTC"))
    equity = pa.table({"param_set": pa.array(np.repeat(np.arange(n_sets, dtype=np.int32), bars)), "ts": ts,
                       "equity": pa.array(eq.to_numpy().T.ravel())})
    rows: list[dict[str, Any]] = [{"param_set": i, **r.params, **r.metrics} for i, r in enumerate(outcome.results)]
    symbols = [(i, sym, v["total_return"], v["trades"]) for i, r in enumerate(outcome.results)
               for sym, v in r.per_symbol.items()]
    per_symbol = pa.table({
        "param_set": pa.array([s[0] for s in symbols], pa.int32()), "symbol": pa.array([s[1] for s in symbols]),
        "total_return": pa.array([s[2] for s in symbols], pa.float64()),
        "trades": pa.array([s[3] for s in symbols], pa.int64()),
    })
    return {"equity": equity, "results": pa.Table.from_pylist(rows), "per_symbol": per_symbol}


def result_record(cmd: BacktestCommand, outcome: BacktestOutcome, artifact: str | None,
                  max_bytes: int | None = RESULT_MAX_BYTES) -> BacktestResult:
    """The result message. When it would exceed `max_bytes` as JSON, per-symbol figures are left out first,
    then the parameter sets with the lowest Sharpe ratios; the artifact keeps everything."""
    results = tuple(outcome.results)
    record = BacktestResult(job_id=cmd.job_id, results=results, artifact=artifact, backend=outcome.backend)
    if max_bytes is None or _size(record) <= max_bytes:
        return record
    record = replace(record, results=tuple(replace(r, per_symbol={}) for r in results))
    if _size(record) <= max_bytes:
        return record
    ranked = sorted(range(len(results)), key=lambda i: _sharpe_key(record.results[i]))
    keep_lo, keep_hi = 1, len(results)
    while keep_lo < keep_hi:  # the most parameter sets that fit
        mid = (keep_lo + keep_hi + 1) // 2
        kept = sorted(ranked[:mid])
        if _size(replace(record, results=tuple(record.results[i] for i in kept))) <= max_bytes:
            keep_lo = mid
        else:
            keep_hi = mid - 1
    return replace(record, results=tuple(record.results[i] for i in sorted(ranked[:keep_lo])))


def _sharpe_key(r: ParamSetResult) -> float:
    s = r.metrics.get("sharpe")
    return -s if s is not None else float("inf")


def _size(record: BacktestResult) -> int:
    return len(orjson.dumps(to_dict(record)))


def params_label(params: Mapping[str, object]) -> str:
    """`fast=10 slow=30 ma=sma`: how reports and tables name a parameter set."""
    return " ".join(f"{k}={v}" for k, v in params.items())

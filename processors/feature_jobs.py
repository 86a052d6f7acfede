"""Feature jobs (the on-demand ComputeFeatures): a universe's bars over a period → the feature table, with the
same kernels as the stream, written as a Parquet artifact.

A row is a bar a symbol has (halted or missing bars are not bars: an interval with no trades has none), in
time order per symbol, with the bar's OHLCV and every requested feature; a value still warming up is null.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gpu_kernels.features import DEFAULT_FEATURES, FeatureError, FeatureSet
from processors.backtest_data import BarPanel, check_request, estimated_bars
from processors.errors import InvalidCommand
from processors.features import features_for_bars
from schemas.records import FeaturesCommand

MAX_CELLS = 50_000_000  # bars × symbols of one job


def feature_set(names: Sequence[str]) -> FeatureSet:
    try:
        return FeatureSet(tuple(names) or DEFAULT_FEATURES)
    except FeatureError as err:
        raise InvalidCommand(str(err)) from None


def validate(cmd: FeaturesCommand) -> None:
    """Everything that can be checked without reading data; InvalidCommand with a one-line reason."""
    feature_set(cmd.features)
    check_request(cmd)
    if estimated_bars(cmd) * len(cmd.universe) > MAX_CELLS:
        raise InvalidCommand(f"the period holds more than {MAX_CELLS:,} bar × symbol cells; split it")


def feature_table(panel: BarPanel, names: Sequence[str]) -> pa.Table:
    """One row per (symbol, bar) that exists, grouped by symbol in universe order, each in time order."""
    fs = feature_set(names)
    tradable = panel.tradable.T  # (symbols, bars)
    sym_idx, bar_idx = np.nonzero(tradable)
    symbols = np.asarray(panel.symbols, dtype=object)[sym_idx]
    cols = {k: getattr(panel, k).T[sym_idx, bar_idx] for k in ("open", "high", "low", "close", "volume")}
    values = features_for_bars(fs, symbols, cols["high"], cols["low"], cols["close"], cols["volume"])
    table: dict[str, pa.Array] = {"symbol": pa.array(symbols.tolist(), pa.string()),
                                  "ts": pa.array(panel.ts[bar_idx], pa.int64())}
    table.update({k: pa.array(v, pa.float64()) for k, v in cols.items()})
    for name in fs.names:
        table[name] = pa.array(values[name], pa.float64(), from_pandas=True)  # NaN (warming up) → null
    return pa.table(table)


def write_table(table: pa.Table, root: str, job_id: str) -> str:
    """`<root>/<job_id>/features.parquet`, written under a temporary name and renamed."""
    fs, base = pafs.FileSystem.from_uri(root) if "://" in root else (pafs.LocalFileSystem(), root)
    folder = f"{base.rstrip('/')}/{job_id}"
    fs.create_dir(folder, recursive=True)
    path = f"{folder}/features.parquet"
    pq.write_table(table, f"{path}.tmp", filesystem=fs)
    fs.move(f"{path}.tmp", path)
    return path if "://" not in root else f"{root.split('://')[0]}://{path}"

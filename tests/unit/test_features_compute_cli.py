"""`streamquant features compute`: bars or ticks from a file, through the same kernels, checked against TA-Lib."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import talib

from processors.synthetic import MarketSpec, TickGenerator


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQUANT_")}
    return subprocess.run([sys.executable, "-m", "streamquant", *args], capture_output=True, text=True,
                          env={**base, "COLUMNS": "200", **env}, timeout=120, check=False)


def test_bars_csv_to_parquet_matches_talib(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for symbol in ("AAA", "BBB"):
        close = 50 * np.exp(np.cumsum(rng.standard_normal(300) * 0.01))
        for i, c in enumerate(close):
            rows.append({"symbol": symbol, "ts": 1_700_000_000_000 + i * 60_000, "open": c, "high": c * 1.01,
                         "low": c * 0.99, "close": c, "volume": 100.0 + i})
    rng.shuffle(rows)  # the tool sorts by symbol and time itself
    src = tmp_path / "bars.csv"
    pacsv.write_csv(pa.Table.from_pylist(rows), src)
    out = tmp_path / "features.parquet"
    result = cli("features", "compute", "--input", str(src), "--output", str(out))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    for symbol in ("AAA", "BBB"):
        t = table.filter(pa.compute.equal(table["symbol"], symbol))
        close = t["close"].to_numpy()
        rsi = np.array(t["rsi_14"].to_pylist(), dtype=float)
        np.testing.assert_allclose(rsi, talib.RSI(close, 14), rtol=1e-9, equal_nan=True)
        macd = np.array(t["macd_12_26_9"].to_pylist(), dtype=float)
        np.testing.assert_allclose(macd, talib.MACD(close, 12, 26, 9)[0], rtol=1e-9, atol=1e-12, equal_nan=True)


def test_ticks_parquet_to_csv_makes_bars_then_features(tmp_path: Path) -> None:
    ticks = TickGenerator(MarketSpec(symbols=3, seed=4, rate=100)).next_chunk(6000)
    src = tmp_path / "ticks.parquet"
    pq.write_table(pa.table({"symbol": ticks.symbol().astype(str), "ts": ticks.ts, "price": ticks.price,
                             "size": ticks.size}), src)
    out = tmp_path / "features.csv"
    result = cli("features", "compute", "--input", str(src), "--output", str(out),
                 STREAMQUANT_FEATURES_INTERVALS='["1s"]')
    assert result.returncode == 0, result.stderr
    table = pacsv.read_csv(out)
    assert set(table["interval"].to_pylist()) == {"1s"}
    assert table.num_rows > 150 and "vol_20" in table.column_names


def test_bad_input_and_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    src = tmp_path / "x.csv"
    src.write_text("a,b\n1,2\n")
    result = cli("features", "compute", "--input", str(src), "--output", str(tmp_path / "o.csv"))
    assert result.returncode == 1 and "needs bar columns" in result.stderr and "Traceback" not in result.stderr
    result = cli("features", "compute", "--input", str(src), "--output", str(tmp_path / "o.csv"),
                 STREAMQUANT_FEATURES_FEATURES='["sma_0"]')
    assert result.returncode == 1 and "sma_0" in result.stderr and "Traceback" not in result.stderr

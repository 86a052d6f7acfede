"""Commands are checked before any data is read; loaders reject what the user can fix; outputs round-trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from processors import backtest as bt
from processors.backtest_data import DATA_LOADERS, periods_per_year, synthetic_times
from schemas.codec import RecordCodec
from schemas.records import BacktestCommand, BacktestResult, DataSource


def command(**kw: object) -> BacktestCommand:
    base: dict[str, object] = dict(job_id="c1", strategy="trend_following", universe=("AAA", "BBB", "CCC"),
                                   start="2021-01-01", end="2021-12-31", data=DataSource("synthetic", seed=3))
    base.update(kw)
    return BacktestCommand(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("change", "reason"), [
    ({"strategy": "nope"}, "unknown strategy 'nope' (known: "),
    ({"params": {"fast": 50}}, "fast (50) must be below slow (30)"),
    ({"params": {"window": 5}}, "has no parameter 'window'"),
    ({"params": {"slow": 100_000}}, "above its maximum"),
    ({"universe": ()}, "the universe is empty"),
    ({"universe": ("AAA", "AAA")}, "symbol AAA appears twice"),
    ({"start": "2022-01-01"}, "the period is empty"),
    ({"end": "someday"}, "is not an ISO-8601 date"),
    ({"interval": "5w"}, "interval '5w' is not like"),
    ({"data": DataSource("parquet")}, "data source parquet needs a path"),
    ({"fees_bps": 10_000}, "below 10000"),
    ({"initial_capital": 0.0}, "initial_capital must be positive"),
    ({"interval": "1s", "universe": tuple(f"S{i}" for i in range(10))}, "bar-symbol cells per run"),
    ({"params": {"fast": list(range(1, 100)), "slow": list(range(100, 200))}, "interval": "1h",
      "universe": tuple(f"S{i}" for i in range(100))}, "too much work"),
])
def test_validate_rejects_with_one_line(change: dict[str, object], reason: str) -> None:
    with pytest.raises(bt.InvalidCommand) as err:
        bt.validate(command(**change))
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


def test_validate_accepts_a_grid_and_an_unregistered_source_is_rejected() -> None:
    bt.validate(command(params={"fast": [5, 10, 40], "slow": [20, 30]}))
    if "topic" not in DATA_LOADERS:  # the job plane registers it where Kafka is at hand
        with pytest.raises(bt.InvalidCommand, match="data source 'topic' is not available here"):
            bt.validate(command(data=DataSource("topic")))


def write_bars(path: Path, ts_as: str) -> pd.DataFrame:
    days = pd.date_range("2021-01-04", periods=60, freq="B", tz="UTC")
    rows = []
    for k, symbol in enumerate(("AAA", "BBB", "ZZZ")):
        for i, day in enumerate(days):
            if symbol == "BBB" and i % 7 == 3:
                continue  # BBB has no bar that day
            px = 10.0 * (k + 1) + i
            rows.append({"symbol": symbol, "ts": day, "open": px, "high": px + 1, "low": px - 1, "close": px + 0.5,
                         "volume": 100.0})
    frame = pd.DataFrame(rows)
    if ts_as == "int":
        frame["ts"] = (frame["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return frame


@pytest.mark.parametrize(("name", "ts_as"),
                         [("bars.parquet", "timestamp"), ("bars.parquet", "int"), ("bars.csv", "int")])
def test_parquet_loader_builds_the_panel(tmp_path: Path, name: str, ts_as: str) -> None:
    write_bars(tmp_path / name, ts_as)
    cmd = command(universe=("BBB", "AAA"), start="2021-01-11", end="2021-02-05",
                  data=DataSource("parquet", path=str(tmp_path / name)))
    bars = bt.load_bars(cmd)
    assert bars.symbols == ("BBB", "AAA")
    assert bars.ts[0] == pd.Timestamp("2021-01-11", tz="UTC").value // 1_000_000
    assert bars.ts[-1] == pd.Timestamp("2021-02-05", tz="UTC").value // 1_000_000  # a date-only end is inclusive
    assert len(bars.ts) == 20
    assert np.isnan(bars.close[:, 0]).sum() == 3 and not np.isnan(bars.close[:, 1]).any()
    assert bars.close[0, 1] == 10.0 + 5 + 0.5


def test_parquet_loader_rejections(tmp_path: Path) -> None:
    path = tmp_path / "bars.parquet"
    write_bars(path, "timestamp")
    cases = [
        (command(data=DataSource("parquet", path=str(path)), universe=("AAA", "QQQ", "XYZ")), "symbols not in"),
        (command(data=DataSource("parquet", path=str(path)), universe=("AAA",), start="2019-01-01",
                 end="2019-12-31"), "no bars between 2019-01-01 and 2019-12-31 for: AAA"),
        (command(data=DataSource("parquet", path=str(tmp_path / "missing.parquet"))), "cannot read bars from"),
    ]
    pq.write_table(pa.table({"symbol": ["AAA"], "ts": [1], "close": [1.0]}), tmp_path / "thin.parquet")
    cases.append((command(data=DataSource("parquet", path=str(tmp_path / "thin.parquet"))), "lacks the columns"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    cases.append((command(data=DataSource("parquet", path=str(tmp_path / "junk.parquet"))), "cannot read bars from"))
    for cmd, reason in cases:
        with pytest.raises(bt.InvalidCommand) as err:
            bt.load_bars(cmd)
        assert reason in str(err.value) and "\n" not in str(err.value)


def test_synthetic_bars_are_seeded_have_halts_and_keep_symbols_independent() -> None:
    one = bt.load_bars(command(universe=("AAA", "BBB")))
    again = bt.load_bars(command(universe=("AAA", "BBB")))
    wider = bt.load_bars(command(universe=("CCC", "AAA", "BBB")))
    other = bt.load_bars(command(universe=("AAA", "BBB"), data=DataSource("synthetic", seed=4)))
    assert np.array_equal(one.close, again.close, equal_nan=True)
    assert np.array_equal(one.close, wider.close[:, 1:], equal_nan=True)
    assert not np.array_equal(one.close, other.close, equal_nan=True)
    assert len(one.ts) == 261  # the weekdays of 2021
    weekday = (one.ts // 86_400_000 + 3) % 7
    assert (weekday < 5).all()
    long = bt.load_bars(command(universe=("AAA", "BBB"), start="2010-01-01", end="2019-12-31"))
    assert (~long.tradable).any(axis=0).all()  # every symbol has halted bars
    valid = long.tradable
    assert (long.high[valid] >= long.close[valid]).all() and (long.low[valid] <= long.open[valid]).all()
    hourly = synthetic_times(0, 2 * 86_400_000, 3_600_000)
    assert len(hourly) == 48


def test_periods_per_year_follow_the_data() -> None:
    day = 86_400_000
    assert periods_per_year("1d", np.arange(5) * day) == 252
    assert periods_per_year("1h", np.arange(48) * 3_600_000) == 252 * 24
    session = np.concatenate([d * day + 14 * 3_600_000 + np.arange(390) * 60_000 for d in range(3)])
    assert periods_per_year("1m", session) == 252 * 390


def test_artifact_and_result_record(tmp_path: Path) -> None:
    cmd = command(params={"fast": [5, 10], "slow": [20, 40]}, fees_bps=5)
    outcome = bt.run_backtest(cmd, bt.load_bars(cmd))
    ref = bt.write_artifact(outcome, str(tmp_path / "artifacts"), cmd.job_id)
    assert ref == str(tmp_path / "artifacts" / "c1")
    equity = pq.read_table(Path(ref) / "equity.parquet").to_pandas()
    assert len(equity) == 4 * len(outcome.equity)
    assert np.array_equal(equity[equity.param_set == 2].equity.to_numpy(), outcome.equity[2].to_numpy())
    results = pq.read_table(Path(ref) / "results.parquet").to_pylist()
    assert [(r["fast"], r["slow"]) for r in results] == [(5, 20), (5, 40), (10, 20), (10, 40)]
    assert results[1]["sharpe"] == outcome.results[1].metrics["sharpe"]
    per_symbol = pq.read_table(Path(ref) / "per_symbol.parquet")
    assert per_symbol.num_rows == 4 * 3 and not list((Path(ref)).glob("*.tmp"))

    record = bt.result_record(cmd, outcome, ref)
    assert record.job_id == "c1" and record.artifact == ref and record.backend == "cpu" and len(record.results) == 4
    for wire in ("json", "avro"):
        codec = RecordCodec(BacktestResult, wire)  # type: ignore[arg-type]
        assert codec.decode(codec.encode(record)) == record
    slim = bt.result_record(cmd, outcome, ref, max_bytes=2_000)
    assert len(slim.results) == 4 and all(r.per_symbol == {} for r in slim.results)
    best = bt.result_record(cmd, outcome, ref, max_bytes=900)
    assert 1 <= len(best.results) < 4
    top = max(outcome.results, key=lambda r: r.metrics["sharpe"] or -1e9)
    assert dataclasses.replace(top, per_symbol={}) in best.results

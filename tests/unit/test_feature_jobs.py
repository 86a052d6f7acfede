"""Feature jobs: the table a job writes equals `streamquant features compute` on the same bars (the offline
tool, a separate code path over the same kernels), and bad commands are rejected with a reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from processors.backtest_data import load_synthetic
from processors.jobs.kinds import KINDS, JobContext, JobRejected, run_job
from schemas.records import DataSource, FeaturesCommand

CMD = {"job_id": "feat-1", "type": "features", "universe": ["AAA", "BBB", "CCC"], "start": "2024-01-01",
       "end": "2024-12-31", "interval": "1d", "data": {"source": "synthetic", "seed": 11}}


def test_feature_job_table_equals_features_compute(tmp_path: Path) -> None:
    result, backend, note = run_job("features", CMD, "cpu", JobContext(str(tmp_path)), lambda p: None)
    assert backend == "cpu" and note is None
    got = pq.read_table(result["artifact"]).to_pandas()
    assert result["rows"] == len(got) and result["symbols"] == 3 and "rsi_14" in result["columns"]

    panel = load_synthetic(FeaturesCommand("x", ("AAA", "BBB", "CCC"), "2024-01-01", "2024-12-31",
                                           DataSource("synthetic", seed=11)))
    rows = [(s, int(t), *(float(getattr(panel, k)[i, j]) for k in ("open", "high", "low", "close", "volume")))
            for j, s in enumerate(panel.symbols) for i, t in enumerate(panel.ts) if panel.tradable[i, j]]
    assert len(rows) == len(got) and len(rows) < len(panel.ts) * 3  # the halted bars are not rows
    bars = pa.table({name: [r[k] for r in rows]
                     for k, name in enumerate(("symbol", "ts", "open", "high", "low", "close", "volume"))})
    pacsv.write_csv(bars, tmp_path / "bars.csv")
    done = subprocess.run([sys.executable, "-m", "streamquant", "features", "compute", "--input",
                           str(tmp_path / "bars.csv"), "--output", str(tmp_path / "want.parquet")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    want = pq.read_table(tmp_path / "want.parquet").to_pandas()
    want = want.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    got = got.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    for name in ["ts", *result["columns"][2:]]:
        assert np.array_equal(got[name].to_numpy(float), want[name].to_numpy(float), equal_nan=True), name


@pytest.mark.parametrize(("change", "reason"), [
    ({"features": ["rsi_14", "nope_3"]}, "nope"),
    ({"universe": ["AAA", "AAA"]}, "twice"),
    ({"start": "2024-05-01", "end": "2024-01-01"}, "empty"),
])
def test_bad_feature_commands_are_rejected(change: dict[str, object], reason: str) -> None:
    kind = KINDS["features"]
    with pytest.raises(JobRejected, match=reason):
        kind.validate(kind.codec.decode_obj({**CMD, **change}))

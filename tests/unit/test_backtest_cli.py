"""`streamquant backtest run` as a user runs it: a result file, a report, an artifact; bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQUANT_")}
    return subprocess.run([sys.executable, "-m", "streamquant", *args], capture_output=True, text=True, cwd=cwd,
                          env={**env, "COLUMNS": "200"}, timeout=120, check=False)


CONFIG = {
    "strategy": "trend_following", "params": {"fast": [5, 10], "slow": [30, 60], "ma": "ema"},
    "universe": ["AAA", "BBB", "CCC"], "start": "2018-01-01", "end": "2020-12-31", "interval": "1d",
    "data": {"source": "synthetic", "seed": 42}, "initial_capital": 90000, "fees_bps": 10, "slippage_bps": 2,
    "execution": "next_open", "direction": "long_short", "backend": "cpu",
}


def test_run_writes_result_report_and_artifact(tmp_path: Path) -> None:
    (tmp_path / "cfg.json").write_text(json.dumps(CONFIG))
    done = run_cli("backtest", "run", "--config", "cfg.json", "--output", "result.json", "--report", "report.html",
                   "--artifacts", "artifacts", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["job_id"].startswith("offline-") and result["backend"] == "cpu"
    assert [r["params"] for r in result["results"]] == [
        {"fast": f, "slow": s, "ma": "ema"} for f in (5, 10) for s in (30, 60)]
    first = result["results"][0]
    assert set(first["metrics"]) == {"total_return", "cagr", "volatility", "sharpe", "sortino", "max_drawdown",
                                     "calmar", "trades", "win_rate", "exposure", "turnover"}
    assert set(first["per_symbol"]) == {"AAA", "BBB", "CCC"} and first["metrics"]["trades"] > 0
    assert Path(result["artifact"], "equity.parquet").exists()
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 2 and "fast=5 slow=30 ma=ema" in page


@pytest.mark.parametrize(("config", "fragment"), [
    ({**CONFIG, "strategy": "moon"}, "unknown strategy 'moon'"),
    ({**CONFIG, "fees_bps": -1}, "fees_bps"),
    ({**CONFIG, "data": {"source": "parquet", "path": "nowhere.parquet"}}, "cannot read bars from nowhere.parquet"),
    ("{not json", "is not valid JSON"),
])
def test_bad_config_is_one_line_and_exit_1(tmp_path: Path, config: object, fragment: str) -> None:
    (tmp_path / "cfg.json").write_text(config if isinstance(config, str) else json.dumps(config))
    done = run_cli("backtest", "run", "--config", "cfg.json", "--output", "result.json", cwd=tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "result.json").exists()

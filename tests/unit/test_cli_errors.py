"""User errors end in one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQUANT_")}
    return subprocess.run([sys.executable, "-m", "streamquant", *args], capture_output=True, text=True,
                          env={**base, "COLUMNS": "200", **(env or {})}, timeout=60, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and fragment in lines[0], lines[0]


def test_unreachable_broker() -> None:
    result = run_cli("tail", "ticks", env={"STREAMQUANT_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert_one_line_error(result, "cannot reach Kafka at 127.0.0.1:1")


def test_unknown_setting() -> None:
    result = run_cli("topics", "list", env={"STREAMQUANT_KAFKA_BOOTSTRAPP": "x"})
    assert_one_line_error(result, "kafka.bootstrapp")


def test_missing_replay_file(tmp_path: Path) -> None:
    result = run_cli("produce", "ticks", "--from-file", str(tmp_path / "nope.csv"))
    assert_one_line_error(result, "does not exist")


def test_replay_file_with_a_bad_row_produces_nothing(tmp_path: Path) -> None:
    f = tmp_path / "ticks.csv"
    f.write_text("symbol,ts,price,size\nAAPL,1700000000000,189.5,100\nAAPL,1700000000001,-3,100\n")
    result = run_cli("produce", "ticks", "--from-file", str(f), env={"STREAMQUANT_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert_one_line_error(result, "row 2: price -3.0 must be positive; nothing was produced")


@pytest.mark.parametrize("content", ["symbol,ts\nA,1\n", "symbol,ts,price,size,colour\nA,1,1,1,red\n"])
def test_replay_file_with_wrong_columns(tmp_path: Path, content: str) -> None:
    f = tmp_path / "ticks.csv"
    f.write_text(content)
    assert_one_line_error(run_cli("produce", "ticks", "--from-file", str(f)), "column")


def test_bad_option_value() -> None:
    result = run_cli("produce", "ticks", "--format", "xml")
    assert_one_line_error(result, "--format must be json or avro")


def test_unknown_option_is_a_usage_error() -> None:
    result = run_cli("produce", "ticks", "--bogus")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--bogus" in result.stderr

"""`streamquant backtest run`: one backtest command offline, no Kafka, through the job plane's engine."""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml
from rich.console import Console
from rich.table import Table

from processors.backtest import (
    BackendUnavailable,
    BacktestOutcome,
    load_bars,
    params_label,
    result_record,
    run_backtest,
    validate,
    write_artifact,
)
from processors.backtest_report import render_report
from schemas.codec import RecordCodec
from schemas.errors import InvalidMessage
from schemas.records import BacktestCommand
from schemas.spec import to_dict
from streamquant.errors import UserError

console = Console()
backtest_app = typer.Typer(no_args_is_help=True, help="Backtests offline: the job plane's engine on a command file.")

_SHOWN = ("total_return", "cagr", "sharpe", "max_drawdown", "trades", "win_rate")


@backtest_app.command("run")
def backtest_run(
    config: Annotated[Path, typer.Option("--config", help="a BacktestCommand as JSON or YAML (job_id optional)")],
    output: Annotated[Path, typer.Option("--output", help="the result as JSON")],
    report: Annotated[Path | None, typer.Option("--report", help="also an HTML report with charts")] = None,
    artifacts: Annotated[Path | None, typer.Option(
        "--artifacts", help="also the Parquet artifact (equity curves, tables) in a folder under this one")] = None,
    backend: Annotated[str | None, typer.Option(help="cpu, gpu or auto (default: the command's own)")] = None,
) -> None:
    """Validate the command, load its bars, run every parameter set, write the result (and report)."""
    cmd = read_command(config)
    validate(cmd)
    bars = load_bars(cmd)
    wanted = backend or cmd.backend
    if wanted not in ("cpu", "gpu", "auto"):
        raise UserError(f"--backend must be cpu, gpu or auto, not {wanted!r}")
    try:
        outcome = run_backtest(cmd, bars, backend=wanted)
    except BackendUnavailable as err:
        if wanted != "auto":
            raise
        console.print(f"[yellow]GPU unusable ({err}); running on the CPU[/]")
        outcome = run_backtest(cmd, bars, backend="cpu")
    artifact = write_artifact(outcome, str(artifacts), cmd.job_id) if artifacts is not None else None
    record = result_record(cmd, outcome, artifact, max_bytes=None)
    _write(output, orjson.dumps(to_dict(record), option=orjson.OPT_INDENT_2))
    if report is not None:
        _write(report, render_report(cmd, outcome).encode())
    _summary(outcome, len(bars.ts))
    console.print(f"result: {output}" + (f", report: {report}" if report else "")
                  + (f", artifact: {artifact}" if artifact else ""))


def read_command(path: Path) -> BacktestCommand:
    """A command file as a valid BacktestCommand; a missing job_id gets a fresh one (offline runs need none)."""
    try:
        text = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read config {path}: {err.strerror}") from None
    try:
        obj: Any = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else orjson.loads(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as err:
        raise UserError(f"config {path} is not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
                        f"{str(err).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise UserError(f"config {path} must hold one JSON object (a BacktestCommand)")
    obj.setdefault("job_id", f"offline-{uuid.uuid4()}")
    for key in ("start", "end"):  # YAML reads an unquoted 2020-01-01 as a date
        if isinstance(obj.get(key), date):
            obj[key] = obj[key].isoformat()
    try:
        cmd: BacktestCommand = RecordCodec(BacktestCommand).decode_obj(obj)
    except InvalidMessage as err:
        raise UserError(f"config {path}: {err.reason}") from None
    return cmd


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}") from None


def _summary(outcome: BacktestOutcome, bars: int) -> None:
    results = outcome.results
    order = sorted(range(len(results)), key=lambda i: -(results[i].metrics.get("sharpe") or float("-inf")))
    table = Table("set", "parameters", *(n.replace("_", " ") for n in _SHOWN),
                  title=f"{len(results):,} parameter set(s) × {bars:,} bars on {outcome.backend} "
                        f"in {outcome.elapsed_s:.3f} s" + (" (best 10 by Sharpe)" if len(results) > 10 else ""))
    for i in order[:10]:
        m = results[i].metrics
        table.add_row(str(i), params_label(results[i].params), *(_cell(n, m.get(n)) for n in _SHOWN))
    console.print(table)


def _cell(name: str, v: float | None) -> str:
    if v is None:
        return "-"
    if name == "trades":
        return f"{int(v):,}"
    return f"{v:.2%}" if name in ("total_return", "cagr", "max_drawdown", "win_rate") else f"{v:.2f}"

"""The kinds of job the plane runs, by name: each validates a command up front (in the plane, no data access)
and runs it (in a worker process). A new kind registers here and needs nothing else from the plane.

A GPU-backed run that fails with a GPU error is run again on the CPU, and the result says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from processors.backtest_data import DATA_LOADERS, check_symbols, period_ms
from processors.bars_topic import read_bars
from processors.errors import InvalidCommand
from schemas.codec import RecordCodec
from schemas.records import BacktestCommand
from schemas.spec import to_dict
from streams.config import KafkaConfig

Progress = Callable[[float], None]


@dataclass(frozen=True)
class JobContext:
    """What a job may use besides its command (sent to the worker process with it)."""

    artifact_root: str                  # where large results go: a path or an fsspec URL
    kafka: KafkaConfig | None = None    # for data read from Kafka (`data.source = topic`)
    bars_topic: str = "bars"


# (command, backend, context, progress) -> result record as a dict
Runner = Callable[[dict[str, Any], str, JobContext, Progress], dict[str, Any]]


class JobRejected(ValueError):
    """The command cannot run (bad parameter, unreadable data, no data in its period): `rejected`."""


@dataclass(frozen=True)
class JobKind:
    name: str
    codec: RecordCodec[Any]
    validate: Callable[[Any], None]     # raises JobRejected
    run: Runner


KINDS: dict[str, JobKind] = {}


def register_kind(kind: JobKind) -> None:
    KINDS[kind.name] = kind


def gpu_visible() -> bool:
    """Whether CuPy is installed and sees a device (checked without touching CUDA when CuPy is absent)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


def run_job(kind: str, command: dict[str, Any], backend: str, context: JobContext,
            progress: Progress) -> tuple[dict[str, Any], str, str | None]:
    """Runs one job; returns (result, backend used, note). GPU errors fall back to the CPU."""
    job = KINDS[kind]
    if backend == "gpu":
        try:
            return job.run(command, "gpu", context, progress), "gpu", None
        except JobRejected:
            raise
        except Exception as err:
            note = f"GPU failed ({type(err).__name__}: {err}); ran on the CPU"
            return job.run(command, "cpu", context, progress), "cpu", note
    return job.run(command, "cpu", context, progress), "cpu", None


# ---------------------------------------------------------------------------------------------- backtest

def _validate_backtest(cmd: BacktestCommand) -> None:
    from processors import backtest

    try:
        backtest.validate(cmd)
    except InvalidCommand as err:
        raise JobRejected(str(err)) from None


def _run_backtest(command: dict[str, Any], backend: str, context: JobContext, progress: Progress) -> dict[str, Any]:
    from processors import backtest

    cmd = BACKTEST_CODEC.decode_obj(command)
    try:
        backtest.validate(cmd)
        if cmd.data.source == "topic" and context.kafka is not None:
            start, end = period_ms(cmd.start, cmd.end)
            bars = read_bars(context.kafka, cmd.data.topic or context.bars_topic, cmd.universe, cmd.interval,
                             start, end)
            check_symbols(cmd, bars)
        else:
            bars = backtest.load_bars(cmd)
    except InvalidCommand as err:
        raise JobRejected(str(err)) from None
    outcome = backtest.run_backtest(cmd, bars, backend=backend, progress=progress)
    artifact = backtest.write_artifact(outcome, context.artifact_root, cmd.job_id)
    return to_dict(backtest.result_record(cmd, outcome, artifact))


def _topic_needs_the_plane(cmd: BacktestCommand) -> Any:
    raise InvalidCommand("data source topic is read by the job plane, which knows the broker")


# The plane reads `topic` sources itself (with its Kafka settings, in `_run_backtest`); registering the name
# lets `validate` accept them here while the offline CLI still says it cannot.
DATA_LOADERS.setdefault("topic", _topic_needs_the_plane)
BACKTEST_CODEC = RecordCodec(BacktestCommand)
register_kind(JobKind("backtest", BACKTEST_CODEC, _validate_backtest, _run_backtest))

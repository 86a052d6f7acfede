"""The kinds of job the plane runs, by name: each validates a command up front (in the plane, no data access)
and runs it (in a worker process). A new kind registers here and needs nothing else from the plane.

A GPU-backed run that fails with a GPU error is run again on the CPU, and the result says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processors import feature_jobs
from processors.backtest_data import DATA_LOADERS, BarPanel, BarsRequest, check_symbols, period_ms
from processors.bars_topic import read_bars
from processors.errors import InvalidCommand
from processors.registry import publish, read_registry, verify_artifact
from schemas.codec import RecordCodec
from schemas.records import (
    BacktestCommand,
    FeaturesCommand,
    FeaturesResult,
    ModelVersion,
    PromoteCommand,
    PromoteResult,
    TrainCommand,
    TrainResult,
)
from schemas.spec import to_dict
from streams.config import KafkaConfig

Progress = Callable[[float], None]


@dataclass(frozen=True)
class JobContext:
    """What a job may use besides its command (sent to the worker process with it)."""

    artifact_root: str                  # where large results go: a path or an fsspec URL
    kafka: KafkaConfig | None = None    # for data read from Kafka (`data.source = topic`) and the registry
    bars_topic: str = "bars"
    models_topic: str = "models"


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
    cacheable: bool = True              # False for jobs whose point is a side effect (training, promotion)


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


def load_bars(cmd: BarsRequest, context: JobContext) -> BarPanel:
    """A job's bars from its data source; `topic` sources are read with the plane's Kafka settings."""
    if cmd.data.source == "topic" and context.kafka is not None:
        start, end = period_ms(cmd.start, cmd.end)
        bars = read_bars(context.kafka, cmd.data.topic or context.bars_topic, cmd.universe, cmd.interval, start, end)
    else:
        loader = DATA_LOADERS.get(cmd.data.source)
        if loader is None:
            raise InvalidCommand(f"data source {cmd.data.source!r} is not available here")
        bars = loader(cmd)
    check_symbols(cmd, bars)
    return bars


def _run_backtest(command: dict[str, Any], backend: str, context: JobContext, progress: Progress) -> dict[str, Any]:
    from processors import backtest

    cmd = BACKTEST_CODEC.decode_obj(command)
    try:
        backtest.validate(cmd)
        bars = load_bars(cmd, context)
    except InvalidCommand as err:
        raise JobRejected(str(err)) from None
    outcome = backtest.run_backtest(cmd, bars, backend=backend, progress=progress)
    artifact = backtest.write_artifact(outcome, context.artifact_root, cmd.job_id)
    return to_dict(backtest.result_record(cmd, outcome, artifact))


def _topic_needs_the_plane(cmd: BarsRequest) -> BarPanel:
    raise InvalidCommand("data source topic is read by the job plane, which knows the broker")


# The plane reads `topic` sources itself (with its Kafka settings, in `_run_backtest`); registering the name
# lets `validate` accept them here while the offline CLI still says it cannot.
DATA_LOADERS.setdefault("topic", _topic_needs_the_plane)
BACKTEST_CODEC = RecordCodec(BacktestCommand)
register_kind(JobKind("backtest", BACKTEST_CODEC, _validate_backtest, _run_backtest))


# ---------------------------------------------------------------------------------------------- features

def _validate_features(cmd: FeaturesCommand) -> None:
    try:
        feature_jobs.validate(cmd)
    except InvalidCommand as err:
        raise JobRejected(str(err)) from None


def _run_features(command: dict[str, Any], backend: str, context: JobContext, progress: Progress) -> dict[str, Any]:
    cmd = FEATURES_CODEC.decode_obj(command)
    try:
        feature_jobs.validate(cmd)
        bars = load_bars(cmd, context)
    except InvalidCommand as err:
        raise JobRejected(str(err)) from None
    progress(0.5)
    table = feature_jobs.feature_table(bars, cmd.features)
    artifact = feature_jobs.write_table(table, context.artifact_root, cmd.job_id)
    result = FeaturesResult(cmd.job_id, artifact, table.num_rows, len(cmd.universe), tuple(table.column_names),
                            "cpu")
    return to_dict(result)


FEATURES_CODEC = RecordCodec(FeaturesCommand)
register_kind(JobKind("features", FEATURES_CODEC, _validate_features, _run_features))


# ---------------------------------------------------------------------------------------------- registry

def _validate_promote(cmd: PromoteCommand) -> None:
    if cmd.type == "promote" and cmd.version is None:
        raise JobRejected("promote needs the version to make active")


def _run_promote(command: dict[str, Any], backend: str, context: JobContext, progress: Progress) -> dict[str, Any]:
    if context.kafka is None:
        raise JobRejected("the registry lives on Kafka; this plane has no broker settings")
    cmd = PROMOTE_CODEC.decode_obj(command)
    registry = read_registry(context.kafka, context.models_topic)
    before = registry.active(cmd.model)
    try:
        records = registry.promote(cmd.model, cmd.version or 0) if cmd.type == "promote" \
            else registry.rollback(cmd.model)
        if records:  # the version becoming active: refused now if no predictor could serve it
            verify_artifact(records[0])
    except InvalidCommand as err:
        raise JobRejected(str(err)) from None
    publish(context.kafka, context.models_topic, records)
    for record in records:
        registry.apply(record)
    now = registry.get(cmd.model)
    return to_dict(PromoteResult(cmd.job_id, cmd.model, now.version, before.version if before else None))


# ---------------------------------------------------------------------------------------------- training

def _validate_train(cmd: TrainCommand) -> None:
    from processors.training import train as training

    try:
        training.validate(cmd)
    except InvalidCommand as err:
        raise JobRejected(str(err)) from None


def _run_train(command: dict[str, Any], backend: str, context: JobContext, progress: Progress) -> dict[str, Any]:
    """Trains, stores the forest as plain arrays with its sha256, registers the next version of the model."""
    from processors.training import train as training

    if context.kafka is None:
        raise JobRejected("training registers models on Kafka; this plane has no broker settings")
    cmd = TRAIN_CODEC.decode_obj(command)
    try:
        training.validate(cmd)
        bars = load_bars(cmd, context)
        outcome = training.train(cmd, bars, backend=backend, progress=progress)
    except InvalidCommand as err:  # no rows left after the warm-up and the label horizon, say
        raise JobRejected(str(err)) from None
    confusion = tuple(tuple(int(x) for x in row) for row in outcome.confusion_matrix)
    importances = {k: float(v) for k, v in outcome.feature_importances.items()}
    rows = int(sum(outcome.rows.values()))
    # Numbering a version is read-then-write on the registry: two training jobs of one model finishing together
    # (worker processes of this plane) would both take the next number. They take it one at a time.
    with model_lock(context.artifact_root, cmd.model):
        registry = read_registry(context.kafka, context.models_topic)
        version = registry.next_version(cmd.model)
        artifact, sha256 = save_forest(outcome.forest, context.artifact_root, cmd.model, version, cmd.job_id)
        publish(context.kafka, context.models_topic, [ModelVersion(
            cmd.model, version, artifact, sha256, tuple(outcome.features), cmd.label, int(time.time() * 1000),
            cmd.start, cmd.end, dict(outcome.metrics), outcome.backend, (), cmd.job_id, confusion, importances, rows,
            float(outcome.train_seconds))])
    return to_dict(TrainResult(cmd.job_id, cmd.model, version, dict(outcome.metrics), confusion, importances, rows,
                               float(outcome.train_seconds), outcome.backend, artifact))


@contextlib.contextmanager
def model_lock(root: str, model: str) -> Iterator[None]:
    """An exclusive lock per model over the artifact root (a file lock: the plane's workers share a host)."""
    folder = Path(root) / "models" / model
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".register.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def save_forest(forest: Any, root: str, model: str, version: int, job_id: str) -> tuple[str, str]:
    """`<root>/models/<model>/v<version>-<job id>/forest.npz` (a job never overwrites another's file); returns
    (path, sha256 of the file)."""
    from gpu_kernels import forest as forest_kernels

    folder = Path(root) / "models" / model / f"v{version}-{job_id}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "forest.npz"
    sha256 = forest_kernels.save(forest, str(path))
    return str(path), sha256


PROMOTE_CODEC = RecordCodec(PromoteCommand)
TRAIN_CODEC = RecordCodec(TrainCommand)
register_kind(JobKind("promote", PROMOTE_CODEC, _validate_promote, _run_promote, cacheable=False))
register_kind(JobKind("rollback", PROMOTE_CODEC, _validate_promote, _run_promote, cacheable=False))
register_kind(JobKind("train", TRAIN_CODEC, _validate_train, _run_train, cacheable=False))

"""The message records of every StreamQuant topic: frozen dataclasses, the single source of their schemas.

JSON Schema and Avro files under `schemas/json` and `schemas/avro` are generated from these classes
(`python -m schemas.generate`) and a test fails when they drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from schemas.spec import Param, c

# Epoch milliseconds between 2000-01-01 and 2100-01-01 (UTC): catches seconds, microseconds and
# nanoseconds sent by mistake.
TS_MIN_MS = 946_684_800_000
TS_MAX_MS = 4_102_444_800_000
SYMBOL_PATTERN = r"^[A-Za-z0-9._:/=^-]{1,32}$"
SYMBOL_MAX = 32
JOB_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$"
INTERVAL_PATTERN = r"^[1-9][0-9]*(ms|s|m|h|d)$"

_symbol = c(pattern=SYMBOL_PATTERN, min_length=1, max_length=SYMBOL_MAX)
_ts = c(minimum=TS_MIN_MS, maximum=TS_MAX_MS, doc="epoch milliseconds, UTC")
_job_id = c(pattern=JOB_ID_PATTERN, doc="chosen by the client; the idempotency key")
_interval = c(pattern=INTERVAL_PATTERN, doc="bar interval such as 1s, 1m, 1d")
_date = c(pattern=DATE_PATTERN, doc="ISO-8601 date or timestamp, UTC when no offset is given")

Backend = Literal["auto", "cpu", "gpu"]
# Training may also name the library that fits the model (processors/training/algorithms.py).
TrainBackend = Literal["auto", "cpu", "gpu", "lightgbm", "sklearn", "cuml"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out", "rejected"]


@dataclass(frozen=True, slots=True)
class Tick:
    """One trade print (or quote update) of one instrument."""

    symbol: str = field(metadata=_symbol)
    ts: int = field(metadata=_ts)
    price: float = field(metadata=c(exclusive_minimum=0))
    size: float = field(metadata=c(minimum=0))
    bid: float | None = field(default=None, metadata=c(exclusive_minimum=0))
    ask: float | None = field(default=None, metadata=c(exclusive_minimum=0))
    exchange: str | None = field(default=None, metadata=c(min_length=1, max_length=16))


@dataclass(frozen=True, slots=True)
class Bar:
    """OHLCV bar of one symbol over one event-time interval starting at `ts`."""

    symbol: str = field(metadata=_symbol)
    interval: str = field(metadata=_interval)
    ts: int = field(metadata=_ts)
    open: float = field(metadata=c(exclusive_minimum=0))
    high: float = field(metadata=c(exclusive_minimum=0))
    low: float = field(metadata=c(exclusive_minimum=0))
    close: float = field(metadata=c(exclusive_minimum=0))
    volume: float = field(metadata=c(minimum=0))
    vwap: float | None = None
    trades: int = field(default=0, metadata=c(minimum=0))


@dataclass(frozen=True, slots=True)
class FeatureVector:
    """Indicator values of one closed bar; a value still warming up is null."""

    symbol: str = field(metadata=_symbol)
    interval: str = field(metadata=_interval)
    ts: int = field(metadata=_ts)
    values: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Prediction:
    """A model's output for one feature vector."""

    symbol: str = field(metadata=_symbol)
    interval: str = field(metadata=_interval)
    ts: int = field(metadata=_ts)
    model: str = field(metadata=c(min_length=1, max_length=128))
    version: int = field(metadata=c(minimum=1))
    probability: float = field(metadata=c(minimum=0, maximum=1))
    signal: int = field(metadata=c(minimum=-1, maximum=1))


@dataclass(frozen=True, slots=True)
class DataSource:
    """Where a job reads its bars: the `bars` topic by time, a Parquet dataset, or a seeded generator."""

    source: Literal["topic", "parquet", "synthetic"]
    path: str | None = field(default=None, metadata=c(min_length=1))
    topic: str | None = field(default=None, metadata=c(min_length=1))
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class BacktestCommand:
    """Run a strategy (or a grid of its parameters) over a universe and period."""

    job_id: str = field(metadata=_job_id)
    strategy: str = field(metadata=c(min_length=1, max_length=64))
    universe: tuple[str, ...] = field(metadata=c(min_items=1))
    start: str = field(metadata=_date)
    end: str = field(metadata=_date)
    data: DataSource
    type: Literal["backtest"] = "backtest"
    params: dict[str, Param] = field(default_factory=dict)
    interval: str = field(default="1d", metadata=_interval)
    initial_capital: float = field(default=100_000.0, metadata=c(exclusive_minimum=0))
    fees_bps: float = field(default=0.0, metadata=c(minimum=0))
    slippage_bps: float = field(default=0.0, metadata=c(minimum=0))
    execution: Literal["close", "next_open"] = "close"
    direction: Literal["long_only", "long_short"] = "long_only"
    priority: int = field(default=5, metadata=c(minimum=0, maximum=9))
    timeout_s: float = field(default=600.0, metadata=c(exclusive_minimum=0))
    backend: Backend = "auto"


@dataclass(frozen=True, slots=True)
class Label:
    """What a model learns to predict."""

    kind: Literal["direction", "forward_return"]
    horizon: int = field(metadata=c(minimum=1))
    dead_zone: float = field(default=0.0, metadata=c(minimum=0))


@dataclass(frozen=True, slots=True)
class Validation:
    """How a training job scores its model: one time-ordered holdout, or walk-forward folds."""

    kind: Literal["holdout", "walk_forward"] = "holdout"
    test_fraction: float = field(default=0.2, metadata=c(exclusive_minimum=0, maximum=0.9))
    folds: int = field(default=1, metadata=c(minimum=1))


@dataclass(frozen=True, slots=True)
class TrainCommand:
    """Train a model version on point-in-time features."""

    job_id: str = field(metadata=_job_id)
    model: str = field(metadata=c(min_length=1, max_length=128))
    features: tuple[str, ...] = field(metadata=c(min_items=1))
    label: Label
    universe: tuple[str, ...] = field(metadata=c(min_items=1))
    start: str = field(metadata=_date)
    end: str = field(metadata=_date)
    data: DataSource
    type: Literal["train"] = "train"
    algorithm: str = "random_forest"
    hyperparams: dict[str, Param] = field(default_factory=dict)
    interval: str = field(default="1m", metadata=_interval)
    validation: Validation = field(default_factory=Validation)
    priority: int = field(default=5, metadata=c(minimum=0, maximum=9))
    timeout_s: float = field(default=3600.0, metadata=c(exclusive_minimum=0))
    backend: TrainBackend = "auto"


@dataclass(frozen=True, slots=True)
class CancelCommand:
    """Stop a queued or running job."""

    job_id: str = field(metadata=_job_id)
    type: Literal["cancel"] = "cancel"
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class FeaturesCommand:
    """Compute the feature table of a universe over a period from its bars (on demand, as a job)."""

    job_id: str = field(metadata=_job_id)
    universe: tuple[str, ...] = field(metadata=c(min_items=1))
    start: str = field(metadata=_date)
    end: str = field(metadata=_date)
    data: DataSource
    type: Literal["features"] = "features"
    interval: str = field(default="1d", metadata=_interval)
    features: tuple[str, ...] = field(default=(), metadata=c(doc="feature columns; empty: the default set"))
    priority: int = field(default=5, metadata=c(minimum=0, maximum=9))
    timeout_s: float = field(default=600.0, metadata=c(exclusive_minimum=0))
    backend: Backend = "auto"


@dataclass(frozen=True, slots=True)
class PromoteCommand:
    """Make a model version the active one (`promote`), or go back to the one active before it (`rollback`)."""

    job_id: str = field(metadata=_job_id)
    type: Literal["promote", "rollback"]
    model: str = field(metadata=c(min_length=1, max_length=128))
    version: int | None = field(default=None, metadata=c(minimum=1, doc="promote: the version; rollback: unused"))
    priority: int = field(default=9, metadata=c(minimum=0, maximum=9))
    timeout_s: float = field(default=60.0, metadata=c(exclusive_minimum=0))


@dataclass(frozen=True, slots=True)
class PromoteResult:
    """The outcome of a promote or rollback: which version is active now, and which was before."""

    job_id: str = field(metadata=_job_id)
    model: str
    active_version: int = field(metadata=c(minimum=1))
    previous_version: int | None = None


@dataclass(frozen=True, slots=True)
class JobStatus:
    """One transition of a job's state machine (compacted by job_id: the newest wins)."""

    job_id: str = field(metadata=_job_id)
    kind: Literal["backtest", "train", "features", "promote", "rollback"]
    state: JobState
    ts: int = field(metadata=_ts)
    backend: str | None = None
    progress: float | None = field(default=None, metadata=c(minimum=0, maximum=1))
    reason: str | None = None
    attempt: int = field(default=1, metadata=c(minimum=1))


@dataclass(frozen=True, slots=True)
class ParamSetResult:
    """Metrics of one parameter set of a backtest."""

    params: dict[str, Param]
    metrics: dict[str, float | None]
    per_symbol: dict[str, dict[str, float | None]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BacktestResult:
    """The outcome of a backtest job; large tables live in the referenced artifact."""

    job_id: str = field(metadata=_job_id)
    results: tuple[ParamSetResult, ...]
    artifact: str | None = None
    backend: str | None = None


@dataclass(frozen=True, slots=True)
class FeaturesResult:
    """The outcome of a features job: the table is the referenced Parquet artifact."""

    job_id: str = field(metadata=_job_id)
    artifact: str
    rows: int = field(metadata=c(minimum=0))
    symbols: int = field(metadata=c(minimum=0))
    columns: tuple[str, ...]
    backend: str | None = None


@dataclass(frozen=True, slots=True)
class TrainResult:
    """The outcome of a training job."""

    job_id: str = field(metadata=_job_id)
    model: str
    version: int = field(metadata=c(minimum=1))
    metrics: dict[str, float | None]
    confusion_matrix: tuple[tuple[int, ...], ...] = ()
    feature_importances: dict[str, float] = field(default_factory=dict)
    rows: int = field(default=0, metadata=c(minimum=0))
    train_seconds: float = field(default=0.0, metadata=c(minimum=0))
    backend: str | None = None
    artifact: str | None = None


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """Registry metadata of one trained model version (key `<model>/<version>`, compacted: the newest record of
    each version wins; the version whose aliases hold "active" serves predictions)."""

    model: str = field(metadata=c(min_length=1, max_length=128))
    version: int = field(metadata=c(minimum=1))
    artifact: str
    sha256: str = field(metadata=c(pattern=r"^[0-9a-f]{64}$"))
    features: tuple[str, ...]
    label: Label
    created: int = field(metadata=_ts)
    data_start: str | None = None
    data_end: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    backend: str | None = None
    aliases: tuple[str, ...] = ()
    # What the training job reported besides the metrics (absent from records written before they were kept).
    job_id: str | None = None
    confusion_matrix: tuple[tuple[int, ...], ...] = ()
    feature_importances: dict[str, float] = field(default_factory=dict)
    rows: int = field(default=0, metadata=c(minimum=0))
    train_seconds: float = field(default=0.0, metadata=c(minimum=0))


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """Request-reply inference: score explicit feature rows, or the latest feature vectors of symbols (from the
    online store), with a model version (the active one when omitted). Exactly one of rows and symbols."""

    correlation_id: str = field(metadata=c(min_length=1, max_length=128))
    model: str = field(metadata=c(min_length=1, max_length=128))
    rows: tuple[dict[str, float | None], ...] = ()
    symbols: tuple[str, ...] = ()
    interval: str | None = field(default=None, metadata=_interval)
    version: int | None = field(default=None, metadata=c(minimum=1))


@dataclass(frozen=True, slots=True)
class PredictResponse:
    """The answer to a PredictRequest: one probability and signal per row, or an error."""

    correlation_id: str = field(metadata=c(min_length=1, max_length=128))
    model: str
    version: int | None = None
    probabilities: tuple[float, ...] = ()
    signals: tuple[int, ...] = ()
    error: str | None = None


RECORD_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Tick,
        Bar,
        FeatureVector,
        Prediction,
        BacktestCommand,
        TrainCommand,
        CancelCommand,
        JobStatus,
        BacktestResult,
        FeaturesCommand,
        FeaturesResult,
        PromoteCommand,
        PromoteResult,
        TrainResult,
        ModelVersion,
        PredictRequest,
        PredictResponse,
    )
}

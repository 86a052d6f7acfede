"""Training jobs' core: check a `TrainCommand`, build its point-in-time dataset, fit each fold, score the test rows,
and hand back the model as node tables (`gpu_kernels.forest.Forest`) with its metrics.

The job plane (processors/jobs) and offline callers use these two functions; neither touches Kafka. The model
handed back is the one whose test rows were scored: the holdout model, or the last walk-forward fold's (trained
on the most data), so the metrics describe the model that gets registered.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpu_kernels.forest import Forest, predict, predict_proba
from processors.backtest_data import BarPanel, check_request, estimated_bars
from processors.errors import InvalidCommand
from processors.feature_jobs import feature_set
from processors.training.algorithms import Task, get_algorithm, pick_backend
from processors.training.dataset import build_dataset
from schemas.records import Label, TrainCommand

MAX_CELLS = 50_000_000  # bar × symbol cells of one job (the feature table is built whole)
MAX_FOLDS = 20
CLASSIFIER_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")
REGRESSOR_METRICS = ("rmse", "mae", "r2")


@dataclass(frozen=True)
class TrainOutcome:
    """What a training run produced. `rows`: training rows of the returned model and test rows scored;
    `dropped`: rows left out, by reason (see processors.training.dataset) plus `purged` (summed over folds)."""

    forest: Forest
    metrics: dict[str, float | None]
    confusion_matrix: tuple[tuple[int, ...], ...]  # classifiers: rows = true (down, up), columns = predicted
    feature_importances: dict[str, float]
    rows: dict[str, int]
    train_seconds: float
    backend: str  # "cpu:lightgbm", "cpu:sklearn", "gpu:cuml"
    features: tuple[str, ...]
    label: Label
    task: Task
    hyperparams: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    folds: int = 1


def validate(cmd: TrainCommand) -> None:
    """Raises InvalidCommand (a one-line reason) for anything wrong that can be seen without reading data."""
    check_model(cmd)
    check_request(cmd)
    bars = estimated_bars(cmd)
    if bars * len(cmd.universe) > MAX_CELLS:
        raise InvalidCommand(f"the period holds up to {bars:,} {cmd.interval} bars × {len(cmd.universe)} symbols; "
                             f"at most {MAX_CELLS:,} bar-symbol cells per training job")
    if cmd.label.horizon >= bars:
        raise InvalidCommand(f"label horizon {cmd.label.horizon} bars is not shorter than the period "
                             f"(at most {bars:,} {cmd.interval} bars)")


def check_model(cmd: TrainCommand) -> None:
    """The part of `validate` about the model (algorithm, features, hyperparameters, label, validation): what
    `train` checks again, its bars already loaded from wherever they came."""
    algorithm = get_algorithm(cmd.algorithm)
    if not cmd.features:
        raise InvalidCommand("a training command needs at least one feature")
    names = feature_set(cmd.features).names
    algorithm.resolve(cmd.hyperparams, len(names))
    label = cmd.label
    if label.kind not in ("direction", "forward_return"):
        raise InvalidCommand(f"label kind must be direction or forward_return, not {label.kind!r}")
    if not (isinstance(label.horizon, int) and label.horizon >= 1):
        raise InvalidCommand("label horizon must be a whole number of bars, at least 1")
    if not (math.isfinite(label.dead_zone) and label.dead_zone >= 0):
        raise InvalidCommand("label dead_zone must be a finite number, at least 0")
    if label.kind == "forward_return" and label.dead_zone > 0:
        raise InvalidCommand("dead_zone applies to direction labels only")
    v = cmd.validation
    if v.kind not in ("holdout", "walk_forward"):
        raise InvalidCommand(f"validation kind must be holdout or walk_forward, not {v.kind!r}")
    if not 0 < v.test_fraction <= 0.9:
        raise InvalidCommand("validation test_fraction must be above 0 and at most 0.9")
    if not 1 <= v.folds <= MAX_FOLDS:
        raise InvalidCommand(f"validation folds must be from 1 to {MAX_FOLDS}")
    if v.kind == "holdout" and v.folds != 1:
        raise InvalidCommand("folds apply to walk_forward validation; a holdout has one test stretch")


def train(cmd: TrainCommand, panel: BarPanel, *, backend: str = "cpu",
          progress: Callable[[float], None] | None = None) -> TrainOutcome:
    """Fits `cmd.algorithm` on the point-in-time rows of `panel` and scores it on the later, purged test rows.

    backend: "cpu", "gpu", "auto" or a backend's name ("lightgbm", "sklearn", "cuml"); BackendUnavailable when
    it cannot run here. InvalidCommand for what the data makes impossible (too few rows, one class only).
    `progress` gets the fraction done after the dataset and after each fold."""
    started = time.perf_counter()
    check_model(cmd)
    algorithm = get_algorithm(cmd.algorithm)
    chosen = pick_backend(algorithm, backend)
    data = build_dataset(cmd, panel)
    params = algorithm.resolve(cmd.hyperparams, len(data.features))
    task: Task = "classifier" if data.task == "classifier" else "regressor"
    if progress is not None:
        progress(0.1)
    scored: list[np.ndarray] = []
    for i, split in enumerate(data.splits):
        y_train = data.y[split.train]
        if task == "classifier" and len(np.unique(y_train)) < 2:
            raise InvalidCommand(f"the training rows of fold {i + 1} are all "
                                 f"{'up' if y_train[0] == 1 else 'down'}; a classifier needs both directions")
        fitted = chosen.fit(data.X[split.train], y_train, task, params, data.features)
        x_test = data.X[split.test]
        if task == "classifier":
            scored.append(predict_proba(fitted.forest, x_test)[:, list(fitted.forest.classes).index(1)])
        else:
            scored.append(predict(fitted.forest, x_test))
        if progress is not None:
            progress(0.1 + 0.9 * (i + 1) / len(data.splits))
    tested = np.concatenate([s.test for s in data.splits])
    truth, score = data.y[tested], np.concatenate(scored)
    metrics, confusion = (classifier_metrics(truth, score) if task == "classifier"
                          else (regressor_metrics(truth, score), ()))
    return TrainOutcome(
        forest=fitted.forest, metrics=metrics, confusion_matrix=confusion,
        feature_importances={n: float(v) for n, v in zip(data.features, fitted.importances, strict=True)},
        rows={"train": len(data.splits[-1].train), "test": len(tested)},
        train_seconds=time.perf_counter() - started, backend=f"{chosen.device}:{chosen.name}",
        features=data.features, label=cmd.label, task=task, hyperparams=params,
        dropped={**data.dropped, "purged": sum(s.purged for s in data.splits)}, folds=len(data.splits),
    )


def classifier_metrics(up: np.ndarray, p_up: np.ndarray) -> tuple[dict[str, float | None],
                                                                   tuple[tuple[int, ...], ...]]:
    """Scores of P(up) against the true directions (1 = up); the predicted direction is up when P(up) > 0.5.
    A score that is undefined on these rows (ROC AUC with one class present) is None."""
    from sklearn import metrics as m

    predicted = (p_up > 0.5).astype(np.int64)
    both = len(np.unique(up)) == 2
    out: dict[str, float | None] = {
        "accuracy": float(m.accuracy_score(up, predicted)),
        "precision": float(m.precision_score(up, predicted, zero_division=0.0)),
        "recall": float(m.recall_score(up, predicted, zero_division=0.0)),
        "f1": float(m.f1_score(up, predicted, zero_division=0.0)),
        "roc_auc": float(m.roc_auc_score(up, p_up)) if both else None,
        "log_loss": float(m.log_loss(up, np.clip(p_up, 1e-15, 1 - 1e-15), labels=[0, 1])),
    }
    confusion = m.confusion_matrix(up, predicted, labels=[0, 1])
    return out, tuple(tuple(int(x) for x in row) for row in confusion)


def regressor_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float | None]:
    from sklearn import metrics as m

    return {
        "rmse": float(np.sqrt(m.mean_squared_error(truth, predicted))),
        "mae": float(m.mean_absolute_error(truth, predicted)),
        "r2": float(m.r2_score(truth, predicted)) if len(truth) > 1 and np.ptp(truth) > 0 else None,
    }

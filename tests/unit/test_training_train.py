"""The training entry point: commands refused with a reason, a model that learns a planted signal, metrics equal to an
independent scikit-learn fit of the same split, the backend choice, and a model family added by registration."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import log_loss, roc_auc_score

from gpu_kernels.forest import predict_proba
from gpu_kernels.forest_export import from_sklearn
from processors.errors import BackendUnavailable, InvalidCommand
from processors.training import algorithms, train
from processors.training.algorithms import Algorithm, Backend, Fitted, get_algorithm, pick_backend
from processors.training.dataset import build_dataset
from processors.training.random_forest import fit_lightgbm, resolve
from schemas.codec import InvalidMessage, RecordCodec
from schemas.records import TrainCommand
from tests.unit.test_training_dataset import panel_from

CODEC = RecordCodec(TrainCommand)
BASE: dict[str, Any] = {
    "job_id": "t-1", "model": "dir", "algorithm": "random_forest", "hyperparams": {"n_estimators": 20, "max_depth": 6},
    "features": ["logret_1", "rsi_14", "vol_20"], "label": {"kind": "direction", "horizon": 1},
    "universe": ["A", "B", "C"], "start": "2027-01-01", "end": "2027-01-03", "interval": "1m",
    "data": {"source": "synthetic", "seed": 3}, "validation": {"kind": "holdout", "test_fraction": 0.25},
}


def cmd(**change: Any) -> TrainCommand:
    return CODEC.decode_obj({**BASE, **change})


def momentum_panel(n: int = 2000, seed: int = 0) -> Any:
    """Returns with autocorrelation 0.4: the next bar's direction is predictable from logret_1 (AUC near 0.63)."""
    rng = np.random.default_rng(seed)
    r = np.zeros((n, 3))
    shocks = rng.normal(0, 0.002, (n, 3))
    for t in range(1, n):
        r[t] = 0.4 * r[t - 1] + shocks[t]
    return panel_from(100 * np.exp(np.cumsum(r, axis=0)))


@pytest.mark.parametrize("change,reason", [
    ({"algorithm": "xgboost"}, "unknown algorithm 'xgboost'"),
    ({"features": ["rsi_14", "bogus_3"]}, "unknown feature 'bogus_3'"),
    ({"hyperparams": {"n_trees": 5}}, "unknown random_forest hyperparameter"),
    ({"hyperparams": {"max_depth": 0}}, "max_depth must be an integer from 1"),
    ({"hyperparams": {"max_features": 9}}, "max_features must be"),
    ({"hyperparams": {"n_estimators": True}}, "n_estimators must be an integer"),
    ({"label": {"kind": "direction", "horizon": 5000}}, "horizon 5000 bars is not shorter than the period"),
    ({"label": {"kind": "forward_return", "horizon": 2, "dead_zone": 0.01}}, "dead_zone applies to direction"),
    ({"universe": ["A", "A"]}, "appears twice"),
    ({"validation": {"kind": "holdout", "folds": 3}}, "folds apply to walk_forward"),
    ({"validation": {"kind": "walk_forward", "folds": 50}}, "folds must be from 1 to 20"),
    ({"data": {"source": "parquet"}}, "parquet needs a path"),
    ({"interval": "1d", "end": "2027-01-04", "label": {"kind": "direction", "horizon": 4}}, "4 bars is not shorter"),
])
def test_bad_commands_are_refused_with_a_reason(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidCommand, match=reason):
        train.validate(cmd(**change))


def test_a_planted_signal_is_learned_and_scored_on_later_rows() -> None:
    outcome = train.train(cmd(hyperparams={"n_estimators": 30, "max_depth": 5, "min_samples_leaf": 20}),
                          momentum_panel(), backend="cpu")
    assert outcome.backend == "cpu:lightgbm" and outcome.task == "classifier"
    assert 0.58 < outcome.metrics["roc_auc"] < 0.70  # type: ignore[operator]
    assert set(outcome.metrics) == set(train.CLASSIFIER_METRICS)
    assert sum(map(sum, outcome.confusion_matrix)) == outcome.rows["test"]
    assert abs(sum(outcome.feature_importances.values()) - 1) < 1e-9
    assert max(outcome.feature_importances, key=outcome.feature_importances.__getitem__) == "logret_1"
    assert outcome.forest.classes == (0, 1) and outcome.forest.feature_names == ("logret_1", "rsi_14", "vol_20")
    assert outcome.forest.depth <= 5 and outcome.forest.n_trees == 30 and outcome.dropped["purged"] == 3


def test_metrics_equal_an_independent_fit_of_the_same_split() -> None:
    command = cmd(hyperparams={"n_estimators": 15, "max_depth": 4, "max_features": "all", "seed": 5})
    panel = momentum_panel(900, seed=2)
    seen: list[float] = []
    outcome = train.train(command, panel, backend="sklearn", progress=seen.append)
    assert outcome.backend == "cpu:sklearn" and seen[0] == 0.1 and seen[-1] == 1.0

    data = build_dataset(command, panel)
    (split,) = data.splits
    model = RandomForestClassifier(n_estimators=15, max_depth=4, max_features=3, min_samples_leaf=1,
                                   random_state=5, n_jobs=1).fit(data.X[split.train], data.y[split.train])
    p_up = model.predict_proba(data.X[split.test])[:, 1]
    truth = data.y[split.test]
    assert outcome.metrics["roc_auc"] == pytest.approx(roc_auc_score(truth, p_up), abs=1e-12)
    assert outcome.metrics["log_loss"] == pytest.approx(log_loss(truth, p_up), abs=1e-9)
    assert outcome.metrics["accuracy"] == pytest.approx(float(((p_up > 0.5) == truth).mean()), abs=1e-12)
    np.testing.assert_allclose(predict_proba(outcome.forest, data.X[split.test])[:, 1], p_up, atol=1e-12)
    assert outcome.rows == {"train": len(split.train), "test": len(split.test)}


def test_walk_forward_and_regression() -> None:
    outcome = train.train(cmd(label={"kind": "forward_return", "horizon": 2}, hyperparams={"n_estimators": 10},
                              validation={"kind": "walk_forward", "test_fraction": 0.3, "folds": 3}),
                          momentum_panel(600, seed=4))
    assert outcome.task == "regressor" and outcome.folds == 3 and outcome.confusion_matrix == ()
    assert set(outcome.metrics) == set(train.REGRESSOR_METRICS) and outcome.metrics["rmse"] > 0  # type: ignore[operator]
    assert not outcome.forest.is_classifier and outcome.dropped["purged"] == 3 * 3 * 2


def test_one_class_only_is_refused() -> None:
    up_only = panel_from(np.tile(100 * 1.001 ** np.arange(300)[:, None], (1, 3)))
    with pytest.raises(InvalidCommand, match="all up"):
        train.train(cmd(), up_only)


def test_the_cpu_forest_is_the_model_lightgbm_itself_scores() -> None:
    """The trees grown one per call are averaged into one LightGBM model; our kernel reproduces LightGBM on it."""
    rng = np.random.default_rng(8)
    X = rng.standard_normal((3000, 5))
    y = (X[:, 0] + rng.standard_normal(3000) > 0).astype(np.int64)
    X[rng.random(X.shape) < 0.03] = np.nan
    fitted = fit_lightgbm(X, y, "classifier", resolve({"n_estimators": 12, "max_depth": 6}, 5), list("abcde"))
    assert fitted.forest.n_trees == 12 and fitted.forest.average and fitted.forest.depth <= 6
    np.testing.assert_allclose(predict_proba(fitted.forest, X)[:, 1], fitted.model.predict(X), rtol=0, atol=1e-12)
    again = fit_lightgbm(X, y, "classifier", resolve({"n_estimators": 12, "max_depth": 6}, 5), list("abcde"))
    np.testing.assert_array_equal(again.forest.threshold, fitted.forest.threshold)  # the seed fixes the trees


def test_hyperparameters_resolve_like_scikit_learn() -> None:
    assert resolve({}, 20)["max_features"] == 4 and resolve({"max_features": "log2"}, 20)["max_features"] == 4
    assert resolve({"max_features": 0.5}, 20)["max_features"] == 10 and resolve({"max_features": 7}, 20)[
        "max_features"] == 7
    assert resolve({"n_estimators": 3}, 5) == {"n_estimators": 3, "max_depth": 12, "max_features": 2,
                                               "min_samples_leaf": 1, "max_bins": 255, "seed": 0}


def test_backend_choice() -> None:
    forest_family = get_algorithm("random_forest")
    assert pick_backend(forest_family, "cpu").name == "lightgbm"
    assert pick_backend(forest_family, "sklearn").name == "sklearn"
    try:
        import cuml  # noqa: F401
    except ImportError:
        assert pick_backend(forest_family, "auto").name == "lightgbm"
        with pytest.raises(BackendUnavailable, match="cuML is not installed"):
            pick_backend(forest_family, "gpu")
    with pytest.raises(InvalidCommand, match="unknown backend 'tpu'"):
        pick_backend(forest_family, "tpu")


@pytest.mark.parametrize("name", ["lightgbm", "sklearn", "cuml", "auto"])
def test_a_train_command_may_name_the_backend_library(name: str) -> None:
    codec = RecordCodec(TrainCommand)
    body = {"job_id": "j-1", "model": "m", "features": ["rsi_14"], "label": {"kind": "direction", "horizon": 5},
            "universe": ["S000"], "start": "2027-01-01", "end": "2027-02-01", "interval": "1m",
            "data": {"source": "synthetic", "seed": 1}, "backend": name}
    assert codec.decode_obj(body).backend == name
    with pytest.raises(InvalidMessage):
        codec.decode_obj({**body, "backend": "tpu"})


def test_a_new_family_is_one_registration_away() -> None:
    """A one-tree 'stump on the first feature' family, registered by name: the same entry point trains it."""
    def fit(X: np.ndarray, y: np.ndarray, task: Any, params: Any, names: Any) -> Fitted:
        from sklearn.tree import DecisionTreeClassifier

        tree = DecisionTreeClassifier(max_depth=1).fit(X[:, :1], y)
        padded = np.hstack((X[:, :1], np.zeros((len(X), X.shape[1] - 1))))
        tree.fit(padded, y)
        return Fitted(from_sklearn(tree, names), np.eye(X.shape[1])[0])

    algorithms.register_algorithm("stump", Algorithm("stump", lambda h, n: dict(h), (
        Backend("stump", "cpu", fit, lambda: None),)))
    try:
        outcome = train.train(cmd(algorithm="stump", hyperparams={}), momentum_panel(400))
        assert outcome.backend == "cpu:stump" and outcome.forest.depth == 1
        assert outcome.feature_importances["logret_1"] == 1.0
    finally:
        algorithms._ALGORITHMS.pop("stump")

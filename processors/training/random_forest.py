"""The `random_forest` algorithm: one set of hyperparameters, fitted by LightGBM or scikit-learn (CPU) or cuML (GPU).

The CPU default grows each tree with LightGBM (histogram splits, all cores) and averages them as a random
forest: on 1,000,000 rows × 20 features × 100 trees it trained in about a ninth of scikit-learn's time for a
test AUC within 0.01 (bench/training.py; figures in bench/RESULTS.md). scikit-learn stays available as the
`sklearn` backend.

How our names map (README, "Training and models", has the table for users):

| ours | scikit-learn | LightGBM (one tree per call) | cuML |
| --- | --- | --- | --- |
| n_estimators | n_estimators | that many calls, seeds from SeedSequence(seed) | n_estimators |
| max_depth | max_depth | max_depth, num_leaves = min(2^depth, 131072) | max_depth |
| max_features (count k) | max_features=k | feature_fraction_bynode = k / features | max_features=k |
| min_samples_leaf | min_samples_leaf | min_data_in_leaf (min_sum_hessian_in_leaf=0) | min_samples_leaf |
| max_bins | (none: exact thresholds) | max_bin | n_bins |
| seed | random_state | seed | random_state |
| (row sampling) | bootstrap, with replacement | bagging_fraction=0.632, bagging_freq=1 (no replacement) | bootstrap |

0.632 is the share of distinct rows a bootstrap sample holds, so each tree sees as many different rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gpu_kernels.forest_export import from_cuml, from_lightgbm, from_sklearn
from processors.errors import InvalidCommand
from processors.training.algorithms import Algorithm, Backend, Fitted, Task, cpu_threads, register_algorithm
from schemas.spec import Param

DEFAULTS: dict[str, Param] = {"n_estimators": 100, "max_depth": 12, "max_features": "sqrt", "min_samples_leaf": 1,
                              "max_bins": 255, "seed": 0}
_INT_RANGES = {"n_estimators": (1, 2000), "max_depth": (1, 32), "min_samples_leaf": (1, 1_000_000),
               "max_bins": (2, 1024), "seed": (0, 2**31 - 1)}
BOOTSTRAP_SHARE = 1.0 - math.exp(-1.0)  # 0.632...: distinct rows in a bootstrap sample of n from n
LIGHTGBM_MAX_LEAVES = 131072


def resolve(hyperparams: Mapping[str, Param], n_features: int) -> dict[str, Any]:
    """Defaults filled in, values checked, and max_features turned into a count of features per split."""
    unknown = sorted(set(hyperparams) - set(DEFAULTS))
    if unknown:
        raise InvalidCommand(f"unknown random_forest hyperparameter(s) {', '.join(unknown)} "
                             f"(known: {', '.join(DEFAULTS)})")
    out: dict[str, Any] = {**DEFAULTS, **hyperparams}
    for name, (lo, hi) in _INT_RANGES.items():
        value = out[name]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise InvalidCommand(f"hyperparameter {name} must be an integer from {lo} to {hi}, not {value!r}")
    out["max_features"] = _features_per_split(out["max_features"], n_features)
    return out


def _features_per_split(value: Param, n_features: int) -> int:
    """scikit-learn's meanings: "sqrt", "log2", "all", a fraction in (0, 1], or a count."""
    if value == "sqrt":
        return max(1, int(math.sqrt(n_features)))
    if value == "log2":
        return max(1, int(math.log2(n_features)))
    if value == "all":
        return n_features
    if isinstance(value, float) and 0.0 < value <= 1.0:
        return max(1, int(value * n_features))
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= n_features:
        return value
    raise InvalidCommand(f"hyperparameter max_features must be sqrt, log2, all, a fraction in (0, 1] or a count "
                         f"from 1 to the {n_features} features, not {value!r}")


# ---------------------------------------------------------------------------------------------- LightGBM


def _lightgbm_missing() -> str | None:
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        return "lightgbm is not installed"
    return None


def fit_lightgbm(X: np.ndarray, y: np.ndarray, task: Task, p: Mapping[str, Any], names: Sequence[str]) -> Fitted:
    """One LightGBM tree per call, each with its own seed, on one binned Dataset; then the trees as one
    random-forest model (averaged), which LightGBM itself can load and score.

    Why not LightGBM's own rf mode: with per-split feature sampling it scored 0.012 AUC below scikit-learn on
    the benchmark's data (200,000 rows: 0.833 against 0.845), and trees grown one per call as here matched
    scikit-learn (0.845); with every feature at every split the two ways agree. A single tree fitted from the
    label's mean with learning rate 1 is exactly what rf mode grows, so nothing else changes.
    """
    import lightgbm

    params = {
        "objective": "binary" if task == "classifier" else "regression",
        "boosting": "gbdt",
        "learning_rate": 1.0,
        "num_iterations": 1,
        "max_depth": p["max_depth"],
        "num_leaves": min(2 ** p["max_depth"], LIGHTGBM_MAX_LEAVES),
        "feature_fraction_bynode": p["max_features"] / X.shape[1],
        "min_data_in_leaf": p["min_samples_leaf"],
        "min_sum_hessian_in_leaf": 0.0,
        "bagging_fraction": BOOTSTRAP_SHARE,
        "bagging_freq": 1,
        "deterministic": True,
        "num_threads": cpu_threads(),
        "verbose": -1,
    }
    data = lightgbm.Dataset(X, y.astype(np.float64), free_raw_data=False,
                            params={"max_bin": p["max_bins"], "verbose": -1, "feature_pre_filter": False})
    seeds = np.random.SeedSequence(p["seed"]).generate_state(p["n_estimators"]) % (2**31 - 1)
    texts = [lightgbm.train({**params, "seed": int(seed)}, data, keep_training_booster=True).model_to_string()
             for seed in seeds]
    booster = lightgbm.Booster(model_str=averaged_model(texts))
    gain = booster.feature_importance("gain").astype(np.float64)
    return Fitted(from_lightgbm(booster, names), _share(gain), booster)


def averaged_model(texts: Sequence[str]) -> str:
    """LightGBM text models of one tree each -> one model whose output is the trees' average (rf semantics)."""
    header = texts[0][: texts[0].index("Tree=0\n")].splitlines()
    lines = [line for line in header if not line.startswith("tree_sizes=")]  # optional; would be stale
    at = next(i for i, line in enumerate(lines) if line.startswith("objective=")) + 1
    lines.insert(at, "average_output")
    trees = []
    for k, text in enumerate(texts):
        body = text[text.index("Tree=0\n") + len("Tree=0\n") : text.index("end of trees")]
        trees.append(f"Tree={k}\n{body.strip()}\n")
    return "\n".join(lines).rstrip() + "\n\n" + "\n".join(trees) + "\nend of trees\n"


# ---------------------------------------------------------------------------------------------- scikit-learn


def _sklearn_missing() -> str | None:
    return None  # a runtime dependency


def fit_sklearn(X: np.ndarray, y: np.ndarray, task: Task, p: Mapping[str, Any], names: Sequence[str]) -> Fitted:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    kind = RandomForestClassifier if task == "classifier" else RandomForestRegressor
    model = kind(n_estimators=p["n_estimators"], max_depth=p["max_depth"], max_features=p["max_features"],
                 min_samples_leaf=p["min_samples_leaf"], random_state=p["seed"], n_jobs=cpu_threads())
    model.fit(X, y)
    return Fitted(from_sklearn(model, names), _share(np.asarray(model.feature_importances_, np.float64)), model)


# ---------------------------------------------------------------------------------------------- cuML


def _cuml_missing() -> str | None:
    try:
        import cuml
        import cupy
    except ImportError:
        return "cuML is not installed (the `gpu` extra)"
    try:
        if int(cupy.cuda.runtime.getDeviceCount()) < 1:
            return "no CUDA device is visible"
    except cupy.cuda.runtime.CUDARuntimeError as err:
        return f"CUDA: {err}"
    if not hasattr(cuml.ensemble.RandomForestClassifier, "as_sklearn"):
        return "this cuML cannot export its trees (cuML 25.02 or later can)"
    return None


def fit_cuml(X: np.ndarray, y: np.ndarray, task: Task, p: Mapping[str, Any], names: Sequence[str]) -> Fitted:
    from cuml.ensemble import RandomForestClassifier, RandomForestRegressor

    kind = RandomForestClassifier if task == "classifier" else RandomForestRegressor
    model = kind(n_estimators=p["n_estimators"], max_depth=p["max_depth"], max_features=p["max_features"],
                 min_samples_leaf=p["min_samples_leaf"], n_bins=p["max_bins"], random_state=p["seed"],
                 bootstrap=True, n_streams=1)  # one stream: the same seed gives the same trees
    model.fit(X.astype(np.float32), y.astype(np.int32 if task == "classifier" else np.float32))
    forest = from_cuml(model, names)
    importances = getattr(model.as_sklearn(), "feature_importances_", np.zeros(X.shape[1]))
    return Fitted(forest, _share(np.asarray(importances, np.float64)), model)


def _share(values: np.ndarray) -> np.ndarray:
    total = float(values.sum())
    return values / total if total > 0 else np.zeros_like(values)


register_algorithm("random_forest", Algorithm("random_forest", resolve, (
    Backend("cuml", "gpu", fit_cuml, _cuml_missing),
    Backend("lightgbm", "cpu", fit_lightgbm, _lightgbm_missing),
    Backend("sklearn", "cpu", fit_sklearn, _sklearn_missing),
)))

"""Fitted tree ensembles (scikit-learn, LightGBM, cuML) to `Forest` node tables, without pickling anything.

Each exporter reads the library's own public description of its trees (scikit-learn's `tree_` arrays,
LightGBM's text model, cuML's conversion to scikit-learn) and states the library's split rule in the node
tables, so `gpu_kernels.forest` reproduces the library's predict_proba. None of the libraries is imported
here: a fitted model is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from gpu_kernels.forest import Forest, ForestError, node_depth

# LightGBM objectives whose output is the raw score (regressors) or its sigmoid (binary classifiers).
_IDENTITY_OBJECTIVES = ("regression", "regression_l2", "regression_l1", "huber", "fair", "quantile", "mape")
_CATEGORICAL_MASK, _DEFAULT_LEFT_MASK = 1, 2
_MISSING_ZERO, _MISSING_NAN = 1, 2


def from_sklearn(model: Any, feature_names: Sequence[str] = ()) -> Forest:
    """A fitted RandomForest/ExtraTrees classifier or regressor (or one decision tree) as node tables.

    scikit-learn casts X to float32 and goes left when x <= threshold; NaN follows `missing_go_to_left`
    (the larger child when training saw no NaN). A classifier's leaf holds class fractions, normalised as
    its predict_proba does before averaging over trees.
    """
    estimators = list(getattr(model, "estimators_", None) or ([model] if hasattr(model, "tree_") else []))
    if not estimators:
        raise ForestError("not a fitted scikit-learn tree ensemble (no estimators_)")
    classes = _int_classes(getattr(model, "classes_", None))
    parts = []
    offset = 0
    for estimator in estimators:
        t = estimator.tree_
        if t.n_outputs != 1:
            raise ForestError("multi-output forests are not supported")
        n = int(t.node_count)
        ids = np.arange(n, dtype=np.int64) + offset
        leaf = t.children_left < 0
        feature = np.where(leaf, -1, t.feature).astype(np.int32)
        left = np.where(leaf, ids, t.children_left + offset)
        right = np.where(leaf, ids, t.children_right + offset)
        missing_left = getattr(t, "missing_go_to_left", None)  # scikit-learn >= 1.3; before, NaN was refused
        nan_left = np.zeros(n, bool) if missing_left is None else np.asarray(missing_left).astype(bool)
        if classes:
            value = np.array(t.value[:, 0, : len(classes)], dtype=np.float64)
            total = value.sum(axis=1, keepdims=True)
            value /= np.where(total == 0.0, 1.0, total)
        else:
            value = np.array(t.value[:, 0, :1], dtype=np.float64)
        parts.append((feature, np.asarray(t.threshold, np.float64), left, right, nan_left, value, offset))
        offset += n
    return _assemble(parts, int(getattr(model, "n_features_in_", estimators[0].n_features_in_)), link="proba"
                     if classes else "identity", classes=classes, float32_inputs=True, feature_names=feature_names,
                     library=f"scikit-learn {_version(model, 'sklearn')}")


def from_lightgbm(model: Any, feature_names: Sequence[str] = ()) -> Forest:
    """A LightGBM Booster (or LGBMClassifier/Regressor) with a binary or regression objective, from its text model
    (full-precision numbers). Random-forest mode averages the trees; gradient boosting adds them.

    LightGBM's split: |x| <= 1e-35 is read as 0; NaN (and, for zero-as-missing splits, 0) goes to the default
    side; otherwise a NaN counts as 0.0; then x <= threshold goes left. Categorical splits are refused.
    """
    booster = getattr(model, "booster_", model)
    if not hasattr(booster, "model_to_string"):
        raise ForestError("not a LightGBM Booster or fitted LGBM model")
    header, trees = _parse_lightgbm(booster.model_to_string())
    objective = header.get("objective", "").split()
    if int(header.get("num_class", "1")) != 1 or int(header.get("num_tree_per_iteration", "1")) != 1:
        raise ForestError("multiclass LightGBM models are not supported")
    if objective and objective[0] == "binary":
        link, classes = "sigmoid", _int_classes(getattr(model, "classes_", None)) or (0, 1)
        sigmoid = float(next((o.split(":")[1] for o in objective[1:] if o.startswith("sigmoid:")), "1"))
    elif objective and objective[0] in _IDENTITY_OBJECTIVES:
        link, classes, sigmoid = "identity", (), 1.0
    else:
        raise ForestError(f"LightGBM objective {' '.join(objective) or '?'} is not supported (binary or regression)")
    parts = []
    offset = 0
    for tree in trees:
        leaves = int(tree["num_leaves"])
        if int(tree.get("num_cat", "0")) != 0:
            raise ForestError("categorical LightGBM splits are not supported")
        inner = leaves - 1
        leaf_value = _numbers(tree["leaf_value"], np.float64)
        split = {k: _numbers(tree.get(k, ""), dt) for k, dt in (("split_feature", np.int64), ("threshold", np.float64),
                 ("decision_type", np.int64), ("left_child", np.int64), ("right_child", np.int64))}
        if len(leaf_value) != leaves or any(len(v) != inner for v in split.values()):
            raise ForestError("a LightGBM tree's arrays do not match its num_leaves")
        decision = split["decision_type"]
        if (decision & _CATEGORICAL_MASK).any():
            raise ForestError("categorical LightGBM splits are not supported")
        missing = (decision >> 2) & 3
        default_left = (decision & _DEFAULT_LEFT_MASK) != 0
        threshold = split["threshold"]
        ids = np.arange(leaves + inner, dtype=np.int64) + offset
        # children: c >= 0 an inner node, c < 0 the leaf ~c; leaves are stored after the inner nodes
        left, right = (np.where(c >= 0, c, inner + ~c) + offset for c in (split["left_child"], split["right_child"]))
        parts.append((
            np.concatenate((split["split_feature"], np.full(leaves, -1))).astype(np.int32),
            np.concatenate((threshold, np.zeros(leaves))),
            np.concatenate((left, ids[inner:])),
            np.concatenate((right, ids[inner:])),
            np.concatenate((np.where(missing == 0, threshold >= 0.0, default_left), np.zeros(leaves, bool))),
            np.concatenate((np.zeros((inner, 1)), leaf_value[:, None])),
            offset,
            np.concatenate((missing == _MISSING_ZERO, np.zeros(leaves, bool))),
        ))
        offset += leaves + inner
    return _assemble(parts, int(header["max_feature_idx"]) + 1, link=link, classes=classes, sigmoid=sigmoid,
                     average="average_output" in header, snap_zero=True, feature_names=feature_names,
                     library=f"lightgbm {_version(booster, 'lightgbm')}")


def from_cuml(model: Any, feature_names: Sequence[str] = ()) -> Forest:
    """A cuML random forest through its own conversion to scikit-learn (`as_sklearn`, cuML >= 25.02), whose split
    rule (float32 features, x <= threshold) is cuML's."""
    if not hasattr(model, "as_sklearn"):
        raise ForestError("this cuML cannot export its trees (no as_sklearn(); cuML 25.02 or later has it)")
    return replace(from_sklearn(model.as_sklearn(), feature_names), library=f"cuml {_version(model, 'cuml')}")


def _parse_lightgbm(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The header and each `Tree=` block of LightGBM's text model as key=value maps (a bare key maps to "")."""
    header: dict[str, str] = {}
    trees: list[dict[str, str]] = []
    current = header
    for line in text.splitlines():
        line = line.strip()
        if line == "end of trees":
            break
        if not line:
            continue
        key, _, value = line.partition("=")
        if key == "Tree":
            current = {}
            trees.append(current)
        else:
            current[key] = value
    if "max_feature_idx" not in header or not trees:
        raise ForestError("not a LightGBM text model with trees")
    return header, trees


def _numbers(text: str, dtype: type) -> np.ndarray:
    try:
        return np.array(text.split(), dtype=dtype)
    except ValueError as err:
        raise ForestError(f"LightGBM model: {err}") from None


def _int_classes(classes: Any) -> tuple[int, ...]:
    if classes is None:
        return ()
    values = np.asarray(classes)
    if values.dtype.kind not in "iub" and not (values.dtype.kind == "f" and np.array_equal(values, np.round(values))):
        raise ForestError("class labels must be integers")
    return tuple(int(c) for c in values)


def _assemble(parts: list[tuple[Any, ...]], n_features: int, *, link: str, classes: tuple[int, ...],
              feature_names: Sequence[str], library: str, float32_inputs: bool = False, snap_zero: bool = False,
              sigmoid: float = 1.0, average: bool = True) -> Forest:
    columns = list(zip(*[p[:7] for p in parts], strict=True))
    zero_missing = [p[7] if len(p) > 7 else np.zeros(len(p[0]), bool) for p in parts]
    feature, threshold, left, right, nan_left, value, offsets = columns
    names = tuple(feature_names)
    if names and len(names) != n_features:
        raise ForestError(f"{len(names)} feature names for a model of {n_features} features")
    tables = {"feature": np.concatenate(feature).astype(np.int32), "left": np.concatenate(left).astype(np.int32),
              "right": np.concatenate(right).astype(np.int32), "roots": np.asarray(offsets, np.int32)}
    return Forest(
        **tables, threshold=np.concatenate(threshold).astype(np.float64),
        nan_left=np.concatenate(nan_left).astype(bool), zero_missing=np.concatenate(zero_missing).astype(bool),
        value=np.concatenate(value).astype(np.float64), n_features=n_features, depth=node_depth(**tables),
        link=link, average=average, sigmoid=sigmoid, float32_inputs=float32_inputs, snap_zero=snap_zero,
        classes=classes, feature_names=names, library=library,
    )


def _version(model: Any, package: str) -> str:
    """The library's version, found without importing it (the model's class lives in the library's modules)."""
    import sys

    module = sys.modules.get(package)
    return str(getattr(module, "__version__", "?"))

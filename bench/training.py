"""Random-forest training and inference, side by side in one run: this project's CPU path against scikit-learn
and LightGBM's own predictors.

    python -m bench.training [--rows 1000000] [--test-rows 200000] [--trees 100] [--no-sklearn-fit]

(1) Training on `rows` × 20 features, `trees` trees, the project's default hyperparameters (max_depth 12,
    sqrt(20) = 4 features per split, min_samples_leaf 1) for both: this project's CPU backend (trees grown by
    LightGBM and averaged, export to node tables included) against scikit-learn's RandomForestClassifier
    (n_jobs = the CPUs here), with the test AUC of each on the same held-out rows.
(2) Inference: rows/s scoring the held-out rows in batches, this project's forest kernel against the library
    that trained each model (LightGBM's Booster.predict on the very same averaged model, scikit-learn's
    predict_proba), all on all CPUs here;
    and the latency of one row at a time (p50, p99 over 10,000 rows).

The data: standard normal features; the label is 1 when x0·0.8 + sin(2·x1) + x2·x3/2 + [x4 > 0.5]/2 − 0.3·x5²
plus unit normal noise is positive; 14 features are noise. A planted signal, so that a model's quality shows
in its AUC (market-like data would give ~0.5 to every model and compare nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score

from gpu_kernels import forest as fk
from gpu_kernels.forest_export import from_sklearn
from processors.training.algorithms import cpu_threads
from processors.training.random_forest import fit_lightgbm, resolve

OUT = Path(__file__).parent / "out"
FEATURES = 20


def planted(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, FEATURES))
    z = 0.8 * X[:, 0] + np.sin(2 * X[:, 1]) + 0.5 * X[:, 2] * X[:, 3] + 0.5 * (X[:, 4] > 0.5) - 0.3 * X[:, 5] ** 2
    return X, (z + rng.standard_normal(rows) > 0).astype(np.int64)


def rows_per_second(predict: Callable[[np.ndarray], Any], X: np.ndarray, batch: int, repeats: int = 3) -> float:
    """Best of `repeats` passes over X in batches (the first, untimed call warms caches and compiled code)."""
    predict(X[:batch])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for lo in range(0, len(X), batch):
            predict(X[lo : lo + batch])
        best = min(best, time.perf_counter() - started)
    return len(X) / best


def latency_us(predict: Callable[[np.ndarray], Any], X: np.ndarray, count: int) -> tuple[float, float]:
    for row in X[:100]:
        predict(row[None, :])
    spent = np.empty(count)
    for i in range(count):
        row = X[i % len(X)][None, :]
        started = time.perf_counter()
        predict(row)
        spent[i] = time.perf_counter() - started
    return float(np.percentile(spent, 50) * 1e6), float(np.percentile(spent, 99) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--test-rows", type=int, default=200_000)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=10_000, help="rows scored one at a time for the latency")
    parser.add_argument("--no-sklearn-fit", action="store_true", help="skip scikit-learn's (slow) training")
    args = parser.parse_args()
    threads = cpu_threads()
    X, y = planted(args.rows, 1)
    X_test, y_test = planted(args.test_rows, 2)
    names = [f"x{i}" for i in range(FEATURES)]
    params = resolve({"n_estimators": args.trees}, FEATURES)
    report: dict[str, Any] = {"rows": args.rows, "test_rows": args.test_rows, "trees": args.trees,
                              "threads": threads, "hyperparams": params, "load_before": os.getloadavg()}

    started = time.perf_counter()
    fitted = fit_lightgbm(X, y, "classifier", params, names)
    ours, booster = fitted.forest, fitted.model
    report["ours_fit_s"] = time.perf_counter() - started
    report["ours_auc"] = float(roc_auc_score(y_test, fk.predict_proba(ours, X_test)[:, 1]))
    report["ours_nodes"] = ours.n_nodes
    print(f"(1) this project (CPU backend): {report['ours_fit_s']:.1f} s, AUC {report['ours_auc']:.4f}",
          flush=True)
    model = RandomForestClassifier(n_estimators=args.trees, max_depth=params["max_depth"],
                                   max_features=params["max_features"], min_samples_leaf=params["min_samples_leaf"],
                                   random_state=0, n_jobs=threads)
    if args.no_sklearn_fit:
        model.fit(X[:100_000], y[:100_000])
        report["sklearn_fit_rows"] = 100_000
    else:
        started = time.perf_counter()
        model.fit(X, y)
        report["sklearn_fit_s"] = time.perf_counter() - started
        report["sklearn_fit_rows"] = args.rows
    report["sklearn_auc"] = float(roc_auc_score(y_test, model.predict_proba(X_test)[:, 1]))
    print(f"(1) scikit-learn RandomForestClassifier on {report['sklearn_fit_rows']:,} rows: "
          f"{report.get('sklearn_fit_s', float('nan')):.1f} s, AUC {report['sklearn_auc']:.4f}", flush=True)

    theirs_sk = from_sklearn(model)
    ours_lgb = fk.predict_proba(ours, X_test[:1000])
    assert np.abs(ours_lgb[:, 1] - booster.predict(X_test[:1000], num_threads=threads)).max() < 1e-12
    assert np.abs(fk.predict_proba(theirs_sk, X_test[:1000]) - model.predict_proba(X_test[:1000])).max() < 1e-12
    batch = args.batch
    report["rows_per_s"] = {
        "ours_on_lightgbm_forest": rows_per_second(lambda a: fk.predict_proba(ours, a), X_test, batch),
        "lightgbm_predict": rows_per_second(lambda a: booster.predict(a, num_threads=threads), X_test, batch),
        "ours_on_sklearn_forest": rows_per_second(lambda a: fk.predict_proba(theirs_sk, a), X_test, batch),
        "sklearn_predict_proba": rows_per_second(model.predict_proba, X_test, batch),
        "ours_levels_engine_on_lightgbm_forest": rows_per_second(
            lambda a: fk.predict_proba(ours, a, engine="levels"), X_test[:20_000], batch, repeats=1),
    }
    model.n_jobs = 1  # one row: threads only add their start-up cost
    report["single_row_us"] = {
        "ours_on_lightgbm_forest": latency_us(lambda a: fk.predict_proba(ours, a), X_test, args.single),
        "ours_on_sklearn_forest": latency_us(lambda a: fk.predict_proba(theirs_sk, a), X_test, args.single),
        "lightgbm_predict": latency_us(lambda a: booster.predict(a, num_threads=1), X_test, min(args.single, 2000)),
        "sklearn_predict_proba": latency_us(model.predict_proba, X_test, min(args.single, 1000)),
    }
    report["load_after"] = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / "training.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

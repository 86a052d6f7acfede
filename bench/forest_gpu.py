"""Forest inference on the GPU (`forest.cu`) against this project's CPU engine and the libraries' own predictors,
same forests, same rows, same run.

    python -m bench.forest_gpu [--train-rows 200000] [--rows 1000000] [--trees 100] [--json OUT]

Two forests of `trees` trees with the project's default hyperparameters (max_depth 12, 4 of 20 features per
split) on the planted-signal data of bench/training.py: this project's CPU training path (trees grown by
LightGBM, compared in float64) and scikit-learn's RandomForestClassifier (compared in float32). For each:
parity of the GPU engine with the library's predict (max |difference|) and with the CPU engine (identical
bits expected); rows/s scoring `rows` rows in batches of 10,000 and in one batch, with the rows already on the
device and with the copies to and from it (what a stream batch pays), against the CPU engine and the
library's predictor on all CPU cores; and single-row latency (p50, p99). Needs CuPy and a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from bench.gpu import require_cupy
from bench.training import FEATURES, latency_us, planted, rows_per_second
from gpu_kernels import forest as fk
from gpu_kernels.forest_export import from_sklearn
from processors.training.algorithms import cpu_threads
from processors.training.random_forest import fit_lightgbm, resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    cupy = require_cupy()
    sync = cupy.cuda.Device().synchronize
    threads = cpu_threads()
    X, y = planted(args.train_rows, 1)
    X_test, _ = planted(args.rows, 2)
    params = resolve({"n_estimators": args.trees}, FEATURES)
    lgb_fit = fit_lightgbm(X, y, "classifier", params, [f"x{i}" for i in range(FEATURES)])
    sk = RandomForestClassifier(n_estimators=args.trees, max_depth=params["max_depth"],
                                max_features=params["max_features"], random_state=0, n_jobs=threads).fit(X, y)
    booster = lgb_fit.model
    forests: dict[str, tuple[fk.Forest, Callable[[np.ndarray], Any]]] = {
        "lightgbm_rf": (lgb_fit.forest, lambda a: booster.predict(a, num_threads=threads)),
        "sklearn_rf": (from_sklearn(sk), lambda a: sk.predict_proba(a)[:, 1]),
    }
    X_dev = cupy.asarray(X_test)
    report: dict[str, Any] = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                              "cpu_threads": threads, "rows": args.rows, "trees": args.trees, "forests": {}}
    for name, (forest, library) in forests.items():
        on_device = forest.on(cupy)

        def gpu_resident(a: Any, f: fk.Forest = on_device) -> Any:
            out = fk.predict_proba(f, a)
            sync()
            return out

        def gpu_copies(a: np.ndarray, f: fk.Forest = on_device) -> np.ndarray:
            return cupy.asnumpy(fk.predict_proba(f, cupy.asarray(a))[:, 1])

        check = min(args.rows, 200_000)
        gpu_p = cupy.asnumpy(fk.predict_proba(on_device, X_dev[:check]))
        lib_p = library(X_test[:check])
        gpu_sums = cupy.asnumpy(fk._scores(on_device, X_dev[:check], "cuda")[1])
        entry: dict[str, Any] = {
            "nodes": forest.n_nodes, "depth": forest.depth,
            "gpu_leaf_sums_equal_cpu_bits": bool(np.array_equal(gpu_sums, fk._scores(forest, X_test[:check],
                                                                                       "compiled")[1])),
            "gpu_vs_library_max_abs": float(np.max(np.abs(gpu_p[:, 1] - lib_p))),
        }
        rps = {
            "gpu_resident_batch_10k": rows_per_second(gpu_resident, X_dev, 10_000),
            "gpu_resident_one_batch": rows_per_second(gpu_resident, X_dev, args.rows),
            "gpu_with_copies_batch_10k": rows_per_second(gpu_copies, X_test, 10_000),
            "gpu_with_copies_one_batch": rows_per_second(gpu_copies, X_test, args.rows),
            "gpu_levels_engine_batch_10k": rows_per_second(
                lambda a, f=on_device: (fk.predict_proba(f, a, engine="levels"), sync()), X_dev[:100_000], 10_000),
            "cpu_engine_batch_10k": rows_per_second(lambda a, f=forest: fk.predict_proba(f, a), X_test, 10_000),
            **{f"{path}_batch_{b}": rows_per_second(fn, X_test[:50_000], b)  # where the GPU starts to pay
               for b in (100, 1000) for path, fn in (("gpu_with_copies", gpu_copies),
                                                    ("cpu_engine", lambda a, f=forest: fk.predict_proba(f, a)))},
            "library_batch_10k": rows_per_second(library, X_test[:200_000], 10_000, repeats=1),
        }
        entry["rows_per_s"] = rps
        entry["gpu_over_cpu_engine"] = rps["gpu_with_copies_batch_10k"] / rps["cpu_engine_batch_10k"]
        entry["gpu_over_library"] = rps["gpu_with_copies_batch_10k"] / rps["library_batch_10k"]
        entry["single_row_us"] = {
            "gpu_with_copies": latency_us(gpu_copies, X_test, 2000),
            "cpu_engine": latency_us(lambda a, f=forest: fk.predict_proba(f, a), X_test, 2000),
        }
        report["forests"][name] = entry
        print(f"{name}: {forest.n_nodes:,} nodes; GPU leaf sums = CPU bits: {entry['gpu_leaf_sums_equal_cpu_bits']}; "
              f"|GPU - library| <= {entry['gpu_vs_library_max_abs']:.1e}", flush=True)
        for key, value in rps.items():
            print(f"  {key:32s} {value:>14,.0f} rows/s", flush=True)
        for key, (p50, p99) in entry["single_row_us"].items():
            print(f"  one row, {key:23s} p50 {p50:8.1f} us  p99 {p99:8.1f} us", flush=True)
    report["load"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""The forest kernel against the libraries' own predict_proba (scikit-learn, LightGBM), on both engines and the
GPU where one is visible; the artifact round trip, its determinism and the refusal of tampered or malformed files.

The inputs are built to hit where copies of a tree walk usually go wrong: values exactly at a threshold and one
float64 step either side (scikit-learn compares float32 copies), NaN in training and at prediction, exact
zeros and values below LightGBM's 1e-35 zero threshold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import zipfile
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

from gpu_kernels import cuda_indicators as cu
from gpu_kernels import forest as fk
from gpu_kernels.forest_export import from_lightgbm, from_sklearn

TOL = 1e-12
ENGINES = ("compiled", "levels")


def _cupy() -> Any:
    try:
        import cupy
    except ImportError:
        return None
    try:
        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except cupy.cuda.runtime.CUDARuntimeError:
        return None


CUPY = _cupy()
GPU = pytest.mark.skipif(CUPY is None, reason="no CuPy GPU visible")
# (array module, engine): every engine on the arrays it runs on
CASES = [("numpy", "compiled"), ("numpy", "levels"), pytest.param("cupy", "levels", marks=GPU),
         pytest.param("cupy", "cuda", marks=GPU)]


def data(n: int, seed: int, *, nan: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    X[:, 3] = np.round(X[:, 3], 1)  # many exact repeats and zeros
    X[:, 4] = np.where(rng.random(n) < 0.3, 0.0, X[:, 4])
    y = (X[:, 0] + X[:, 1] * X[:, 2] + 0.5 * X[:, 3] + rng.standard_normal(n) > 0).astype(np.int64)
    X[rng.random(X.shape) < nan] = np.nan
    return X, y


def edge_rows(forest: fk.Forest, n_features: int, seed: int) -> np.ndarray:
    """Rows whose values sit on thresholds, one float64 step off them, below 1e-35, zero or NaN."""
    rng = np.random.default_rng(seed)
    inner = forest.feature >= 0
    thresholds = forest.threshold[inner]
    thresholds = thresholds[np.isfinite(thresholds)]  # scikit-learn splits NaN from the rest at +inf
    picks = rng.choice(thresholds, size=(400, n_features))
    steps = rng.integers(-1, 2, size=picks.shape)
    X = np.where(steps < 0, np.nextafter(picks, -np.inf), np.where(steps > 0, np.nextafter(picks, np.inf), picks))
    X[rng.random(X.shape) < 0.05] = np.nan
    X[rng.random(X.shape) < 0.05] = 0.0
    X[rng.random(X.shape) < 0.03] = 5e-36
    X[rng.random(X.shape) < 0.03] = -1e-300
    return np.vstack((X, data(400, seed + 1)[0]))


def on(kind: str, X: np.ndarray) -> Any:
    return CUPY.asarray(X) if kind == "cupy" else X


def host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


@pytest.fixture(scope="module")
def sklearn_pair() -> tuple[RandomForestClassifier, fk.Forest]:
    X, y = data(4000, 1)
    model = RandomForestClassifier(n_estimators=25, max_depth=9, random_state=0, n_jobs=1).fit(X, y)
    return model, from_sklearn(model, [f"f{i}" for i in range(6)])


@pytest.fixture(scope="module")
def lightgbm_pair() -> tuple[lgb.Booster, fk.Forest]:
    X, y = data(4000, 2)
    params = {"objective": "binary", "boosting": "rf", "bagging_fraction": 0.632, "bagging_freq": 1,
              "feature_fraction_bynode": 0.5, "num_leaves": 256, "max_depth": 8, "min_data_in_leaf": 3,
              "verbose": -1, "num_threads": 1, "seed": 3}
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=25)
    return booster, from_lightgbm(booster)


@pytest.mark.parametrize(("array", "engine"), CASES)
def test_sklearn_classifier_probabilities(sklearn_pair: Any, engine: str, array: str) -> None:
    model, forest = sklearn_pair
    X = edge_rows(forest, 6, 5)
    got = host(fk.predict_proba(forest, on(array, X), engine=engine))
    np.testing.assert_allclose(got, model.predict_proba(X), rtol=0, atol=TOL)
    assert forest.float32_inputs and forest.classes == (0, 1) and forest.feature_names[0] == "f0"


def test_the_float32_cast_matters(sklearn_pair: Any) -> None:
    """Without scikit-learn's float32 cast some of these rows would land in other leaves: the edge rows test it."""
    model, forest = sklearn_pair
    X = edge_rows(forest, 6, 5)
    naive = dataclasses.replace(forest, float32_inputs=False)
    assert np.abs(fk.predict_proba(naive, X) - model.predict_proba(X)).max() > 1e-6


@pytest.mark.parametrize(("array", "engine"), CASES)
def test_lightgbm_random_forest_probabilities(lightgbm_pair: Any, engine: str, array: str) -> None:
    booster, forest = lightgbm_pair
    X = edge_rows(forest, 6, 7)
    got = host(fk.predict_proba(forest, on(array, X), engine=engine))
    np.testing.assert_allclose(got[:, 1], booster.predict(X), rtol=0, atol=TOL)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=TOL)
    assert forest.average and forest.link == "sigmoid"


@pytest.mark.parametrize("variant", ["zero_as_missing", "gbdt", "regression"])
def test_lightgbm_other_split_rules_and_objectives(variant: str) -> None:
    X, y = data(3000, 4)
    params: dict[str, Any] = {"objective": "binary", "boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1,
                              "num_leaves": 64, "max_depth": 7, "verbose": -1, "num_threads": 1, "seed": 1}
    if variant == "zero_as_missing":
        params["zero_as_missing"] = True
    elif variant == "gbdt":
        params.update(boosting="gbdt", learning_rate=0.3)
    target = X[:, 0] * 2 + np.nan_to_num(X[:, 3]) if variant == "regression" else y
    if variant == "regression":
        params["objective"] = "regression"
        target = np.nan_to_num(target)
    booster = lgb.train(params, lgb.Dataset(X, target), num_boost_round=15)
    forest = from_lightgbm(booster)
    if variant == "zero_as_missing":
        assert forest.zero_missing.any()
    rows = edge_rows(forest, 6, 9)
    for engine in ENGINES:
        got = (fk.predict(forest, rows, engine=engine) if variant == "regression"
               else fk.predict_proba(forest, rows, engine=engine)[:, 1])
        np.testing.assert_allclose(got, booster.predict(rows), rtol=0, atol=TOL)


def test_sklearn_regressor_and_labels() -> None:
    X, y = data(3000, 6)
    target = np.nan_to_num(X[:, 0]) * 3 + y
    model = RandomForestRegressor(n_estimators=12, max_depth=7, random_state=0, n_jobs=1).fit(X, target)
    forest = from_sklearn(model)
    rows = edge_rows(forest, 6, 10)
    for engine in ENGINES:
        np.testing.assert_allclose(fk.predict(forest, rows, engine=engine), model.predict(rows), rtol=0, atol=TOL)
    with pytest.raises(fk.ForestError, match="regressor"):
        fk.predict_proba(forest, rows)
    classifier = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(X, y * 2 - 1)  # -1 / 1
    assert (fk.predict(from_sklearn(classifier), rows) == classifier.predict(rows)).all()


def test_one_row_and_many_rows_agree(lightgbm_pair: Any) -> None:
    _, forest = lightgbm_pair
    X = data(2000, 12)[0]  # above the serial cut-off: the parallel path
    batch = fk.predict_proba(forest, X)
    singles = np.vstack([fk.predict_proba(forest, row) for row in X[:50]])
    np.testing.assert_array_equal(singles, batch[:50])
    with pytest.raises(fk.ForestError, match="shaped"):
        fk.predict_proba(forest, X[:, :5])


def test_save_load_round_trip_is_deterministic(tmp_path: Path, lightgbm_pair: Any) -> None:
    _, forest = lightgbm_pair
    path = tmp_path / "forest.npz"
    digest = fk.save(forest, str(path))
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert forest.save(str(tmp_path / "again.npz")) == digest  # same forest, same bytes
    loaded = fk.load(str(path), digest)
    X = edge_rows(forest, 6, 13)
    np.testing.assert_array_equal(fk.predict_proba(loaded, X), fk.predict_proba(forest, X))
    assert loaded.library.startswith("lightgbm") and loaded.classes == (0, 1) and loaded.snap_zero
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.npz", "forest.npz"]  # no temporary file left


def test_a_tampered_artifact_is_refused(tmp_path: Path, sklearn_pair: Any) -> None:
    _, forest = sklearn_pair
    path = tmp_path / "forest.npz"
    digest = fk.save(forest, str(path))
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(fk.ArtifactMismatch, match=r"sha256 .* refusing"):
        fk.load(str(path), digest)
    with pytest.raises(FileNotFoundError):
        fk.load(str(tmp_path / "missing.npz"), digest)


def _npz(members: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in members.items():
            with archive.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, array, allow_pickle=True)
    return buffer.getvalue()


def test_pickles_and_malformed_tables_are_refused_even_with_the_right_hash(tmp_path: Path) -> None:
    good = fk.Forest(feature=np.array([0, -1, -1], np.int32), threshold=np.array([0.5, 0, 0]),
                     left=np.array([1, 1, 2], np.int32), right=np.array([2, 1, 2], np.int32),
                     nan_left=np.zeros(3, bool), zero_missing=np.zeros(3, bool),
                     value=np.array([[0, 0], [1, 0], [0, 1.0]]), roots=np.array([0], np.int32), n_features=1,
                     depth=1, classes=(0, 1))
    np.testing.assert_array_equal(fk.predict_proba(good, np.array([[0.2], [0.9], [np.nan]])),
                                  [[1, 0], [0, 1], [0, 1]])
    path = tmp_path / "good.npz"
    fk.save(good, str(path))
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}

    def written(**change: np.ndarray) -> tuple[str, str]:
        blob = _npz({**members, **change})
        bad = tmp_path / "bad.npz"
        bad.write_bytes(blob)
        return str(bad), hashlib.sha256(blob).hexdigest()

    with pytest.raises(fk.ForestError, match="cannot be read"):
        fk.load(*written(value=np.array([object()], dtype=object)))  # a pickle inside: never unpickled
    with pytest.raises(fk.ForestError, match="after its parent"):
        fk.load(*written(left=np.array([0, 1, 2], np.int32)))  # a cycle: the root is its own child
    with pytest.raises(fk.ForestError, match="exactly one parent"):
        fk.load(*written(right=np.array([1, 1, 2], np.int32)))
    with pytest.raises(fk.ForestError, match="out of range"):
        fk.load(*written(feature=np.array([3, -1, -1], np.int32)))


# ---------------------------------------------------------------- forest.cu, the GPU engine's source


@pytest.fixture(scope="module")
def host_forest_cu(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """forest.cu built for the host with the C++ compiler: the GPU threads run one after another."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler to build the CUDA source for the host")
    return cu.host_launcher(cu.host_library(tmp_path_factory.mktemp("forest-cu"), source_name=fk.CUDA_SOURCE))


def multiclass_pair() -> tuple[RandomForestClassifier, fk.Forest]:
    X, y = data(3000, 8)
    y = y + (np.nan_to_num(X[:, 5]) > 0.7)  # three classes
    model = RandomForestClassifier(n_estimators=9, max_depth=6, random_state=0, n_jobs=1).fit(X, y)
    return model, from_sklearn(model)


def test_the_cuda_source_gives_the_compiled_engines_bits(host_forest_cu: Any, sklearn_pair: Any,
                                                         lightgbm_pair: Any) -> None:
    """float32 compares (scikit-learn), float64 with NaN defaults (LightGBM), three outputs (multiclass)."""
    zero_missing = lgb.train({"objective": "binary", "boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1,
                              "num_leaves": 32, "max_depth": 6, "verbose": -1, "num_threads": 1, "seed": 2,
                              "zero_as_missing": True}, lgb.Dataset(*data(2000, 9)), num_boost_round=8)
    forests = [sklearn_pair[1], lightgbm_pair[1], multiclass_pair()[1], from_lightgbm(zero_missing)]
    assert forests[3].zero_missing.any() and forests[2].value.shape[1] == 3
    for forest in forests:
        X = edge_rows(forest, 6, 13)[:300]
        if forest.snap_zero:  # what _scores does before either engine
            X = np.where(np.abs(X) <= fk.ZERO_THRESHOLD, 0.0, X)
        if forest.float32_inputs:
            X = X.astype(np.float32).astype(np.float64)
        got = fk.sums_cuda(forest, X, np, host_forest_cu)
        np.testing.assert_array_equal(got, fk._sums_compiled(forest, X))


def test_the_cuda_source_matches_the_library(host_forest_cu: Any) -> None:
    model, forest = multiclass_pair()
    X = edge_rows(forest, 6, 14)[:300]
    got = fk.sums_cuda(forest, X.astype(np.float32).astype(np.float64), np, host_forest_cu) / forest.n_trees
    np.testing.assert_allclose(got, model.predict_proba(X), rtol=0, atol=TOL)


def test_the_cuda_engine_needs_cupy_arrays(lightgbm_pair: Any) -> None:
    with pytest.raises(fk.ForestError, match="cuda engine runs on CuPy"):
        fk.predict_proba(lightgbm_pair[1], data(10, 1)[0], engine="cuda")


@GPU
def test_the_gpu_engine_equals_the_cpu_engine_bit_for_bit(sklearn_pair: Any, lightgbm_pair: Any) -> None:
    """Many rows (several blocks of threads), both comparison precisions, a forest kept on the device: the same
    leaf sums to the bit; probabilities to an ulp (LightGBM's sigmoid uses the device's exp)."""
    for forest in (sklearn_pair[1], lightgbm_pair[1], multiclass_pair()[1]):
        X = np.vstack([edge_rows(forest, 6, 15), data(20_000, 16)[0]])
        _, cpu_sums = fk._scores(forest, X, "compiled")
        cpu = fk.predict_proba(forest, X)
        on_device = forest.on(CUPY)
        for f in (forest, on_device):
            _, gpu_sums = fk._scores(f, CUPY.asarray(X), "cuda")
            np.testing.assert_array_equal(host(gpu_sums), cpu_sums)
            np.testing.assert_allclose(host(fk.predict_proba(f, CUPY.asarray(X))), cpu, rtol=0, atol=1e-15)
        np.testing.assert_array_equal(host(fk._scores(on_device, CUPY.asarray(X[:1]), "cuda")[1]), cpu_sums[:1])

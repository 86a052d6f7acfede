"""Tree ensembles as plain node tables, their artifact file (hash-checked, never a pickle), and inference.

A `Forest` is every tree's nodes concatenated into flat arrays: split feature, threshold, children (global
node indices), where a missing value goes, and leaf values; `roots[i]` is where tree i starts. Anything that
can express its trees this way (scikit-learn, LightGBM, cuML: see `gpu_kernels.forest_export`) is served by
the same code, so a model scores the same in training, backtests, the stream and request-reply.

Inference has three engines with one meaning:
- `levels`, written once against `xp` (NumPy or CuPy, the module of X): all rows × all trees step down one
  level at a time, `depth` times (a leaf points to itself, so rows that arrive early stay put). The readable
  reference, on either device.
- `compiled` (Numba, NumPy only): each block of rows walks one tree after another, so a tree's nodes stay in
  cache; blocks run in parallel. It is the CPU path, and with one row the low-latency path.
- `cuda` (CuPy only): `forest.cu`, one GPU thread per row walking the compiled engine's table layout tree
  after tree, adding in the same order: the same bits as `compiled`. The GPU path.

Both reproduce the training library bit for bit at each split, which is where a copy usually goes wrong:
scikit-learn casts features to float32 before comparing with `<=` to a float64 threshold; LightGBM compares
float64 values, sends NaN (and, with zero-as-missing, values within 1e-35 of zero) to a default side, and
otherwise treats NaN as 0.0.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, fields, replace
from types import ModuleType
from typing import Any

import numpy as np
from numba import njit, prange

FORMAT = "streamquant.forest/1"
# LightGBM's kZeroThreshold (a float literal 1e-35f, compared as a double).
ZERO_THRESHOLD = float(np.float32(1e-35))
LINKS = ("proba", "sigmoid", "identity")
ARRAYS = ("feature", "threshold", "left", "right", "nan_left", "zero_missing", "value", "roots")
_DTYPES = {"feature": np.int32, "threshold": np.float64, "left": np.int32, "right": np.int32,
           "nan_left": np.bool_, "zero_missing": np.bool_, "value": np.float64, "roots": np.int32}
# (rows × trees) node indices the `levels` engine holds at once: a few tens of MB per temporary.
LEVEL_CELLS = 1 << 21
CUDA_SOURCE = "forest.cu"
_BLOCK = 256  # rows per block of the compiled engine (their features stay in L1/L2 while trees pass)
_SERIAL_ROWS = 512  # below this, threads cost more than they save


class ForestError(ValueError):
    """Node tables or an artifact that cannot be a valid forest."""


class ArtifactMismatch(ForestError):
    """An artifact whose bytes are not the ones registered (sha256 differs): it is refused, never loaded."""


@dataclass(frozen=True, eq=False)
class Forest:
    """Node tables of an ensemble; see the module docstring. Arrays live on NumPy, or on `xp` after `on(xp)`.

    Output: sum the leaf values each row reaches over all trees (divided by the tree count when `average`),
    then `link`: "proba" (the values are class probabilities), "sigmoid" (binary: P(class 1) =
    1 / (1 + exp(-sigmoid × score))) or "identity" (a regressor's value).
    """

    feature: Any  # (N,) int32 split feature; -1 at a leaf
    threshold: Any  # (N,) float64: go left when x <= threshold
    left: Any  # (N,) int32 global node index; a leaf points to itself
    right: Any  # (N,) int32
    nan_left: Any  # (N,) bool: where a NaN goes
    zero_missing: Any  # (N,) bool: |x| <= ZERO_THRESHOLD goes where NaN goes (LightGBM zero-as-missing)
    value: Any  # (N, K) float64 leaf outputs
    roots: Any  # (T,) int32: tree i is nodes roots[i] .. roots[i+1]-1 (the last one runs to N)
    n_features: int
    depth: int  # the longest root-to-leaf path, in splits
    link: str = "proba"
    average: bool = True
    sigmoid: float = 1.0
    float32_inputs: bool = False  # compare float32(x) (scikit-learn, cuML) rather than x
    snap_zero: bool = False  # read |x| <= ZERO_THRESHOLD as 0.0 first (LightGBM's predictor drops them as zeros)
    classes: tuple[int, ...] = ()  # a classifier's labels, in output-column order; () for a regressor
    feature_names: tuple[str, ...] = ()
    library: str = ""  # what trained it, for people ("lightgbm 4.7.0")

    def __post_init__(self) -> None:
        if self.link not in LINKS:
            raise ForestError(f"link must be one of {', '.join(LINKS)}, not {self.link!r}")
        if isinstance(self.feature, np.ndarray):
            check(self)

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.feature.shape[0])

    @property
    def is_classifier(self) -> bool:
        return bool(self.classes)

    def on(self, xp: ModuleType) -> Forest:
        """The same forest with its arrays on `xp` (e.g. CuPy), copied once rather than per prediction."""
        return replace(self, **{name: xp.asarray(getattr(self, name)) for name in ARRAYS})

    def save(self, path: str) -> str:
        return save(self, path)


def check(forest: Forest) -> None:
    """Raises ForestError unless the tables are well formed, so that every walk ends at a leaf in `depth` steps.

    Each tree's children lie after their parent and inside the tree, and every node but a root has exactly one
    parent: the nodes form trees, without cycles, whatever a file says.
    """
    arrays = {name: getattr(forest, name) for name in ARRAYS}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype != _DTYPES[name]:
            raise ForestError(f"forest.{name} must be a NumPy {np.dtype(_DTYPES[name]).name} array")
    n = forest.n_nodes
    for name in ("threshold", "left", "right", "nan_left", "zero_missing"):
        if arrays[name].shape != (n,):
            raise ForestError(f"forest.{name} must have one entry per node ({n})")
    if forest.value.ndim != 2 or forest.value.shape[0] != n or forest.value.shape[1] < 1:
        raise ForestError("forest.value must be shaped (nodes, outputs)")
    roots = forest.roots
    if roots.ndim != 1 or len(roots) < 1 or roots[0] != 0 or (len(roots) > 1 and bool((np.diff(roots) <= 0).any())) \
            or int(roots[-1]) >= n:
        raise ForestError("forest.roots must start at 0 and increase strictly within the nodes")
    if not 1 <= forest.n_features < 1 << 24 or not (forest.value[forest.feature < 0].size == 0 or
                                     np.isfinite(forest.value[forest.feature < 0]).all()):
        raise ForestError("a forest needs 1 to 2^24 - 1 features and finite leaf values")
    idx = np.arange(n)
    tree_end = np.repeat(np.append(roots[1:], n), np.diff(np.append(roots, n)))
    inner = forest.feature >= 0
    leaf = ~inner
    if (forest.feature[inner] >= forest.n_features).any() or (forest.feature[leaf] != -1).any():
        raise ForestError("a split feature is out of range (or a leaf's feature is not -1)")
    if np.isnan(forest.threshold[inner]).any():
        raise ForestError("a split threshold is NaN")
    for side in (forest.left, forest.right):
        if (side[leaf] != idx[leaf]).any():
            raise ForestError("a leaf must point to itself")
        if ((side[inner] <= idx[inner]) | (side[inner] >= tree_end[inner])).any():
            raise ForestError("a child must lie after its parent and inside its tree")
    parents = np.bincount(np.concatenate((forest.left[inner], forest.right[inner])), minlength=n)
    want = np.ones(n, np.int64)
    want[roots] = 0
    if not np.array_equal(parents, want):
        raise ForestError("every node but a root must have exactly one parent")
    if forest.classes and forest.link == "sigmoid" and len(forest.classes) != 2:
        raise ForestError("a sigmoid forest is binary: it needs two classes")
    if forest.classes and forest.link == "proba" and forest.value.shape[1] != len(forest.classes):
        raise ForestError("a probability forest needs one leaf value per class")
    depth = node_depth(forest.feature, forest.left, forest.right, forest.roots)
    if depth != forest.depth:
        raise ForestError(f"forest.depth says {forest.depth}, the trees are {depth} deep")


def node_depth(feature: np.ndarray, left: np.ndarray, right: np.ndarray, roots: np.ndarray) -> int:
    """The longest root-to-leaf path (in splits) of well-formed tables, found one level at a time."""
    inner = feature >= 0
    level = np.asarray(roots, np.int64)
    depth = 0
    while True:
        level = level[inner[level]]
        if len(level) == 0:
            return depth
        level = np.concatenate((left[level], right[level])).astype(np.int64)
        depth += 1
        if depth > len(feature):
            raise ForestError("the node tables have a cycle")


# ---------------------------------------------------------------------------------------------- artifact


def save(forest: Forest, path: str) -> str:
    """Writes the forest to `path` (an .npz: plain arrays plus one JSON header, no pickle), atomically, and
    returns the file's sha256. The same forest always gives the same bytes, so the same hash."""
    forest = forest.on(np) if not isinstance(forest.feature, np.ndarray) else forest
    meta = {"format": FORMAT, **{f.name: getattr(forest, f.name) for f in fields(forest) if f.name not in ARRAYS}}
    members = {"meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)}
    members.update({name: np.ascontiguousarray(getattr(forest, name)) for name in ARRAYS})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in members.items():
            # A fixed date: np.savez stamps the current time, which would change the hash of equal forests.
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    data = buffer.getvalue()
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def load(path: str, sha256: str) -> Forest:
    """The forest at `path`, after checking that its bytes hash to `sha256` (ArtifactMismatch if not).

    The bytes hashed are the bytes parsed (read once), and parsing never unpickles: a tampered or replaced
    file is refused before any of it is used. FileNotFoundError when the file is missing.
    """
    with open(path, "rb") as f:
        data = f.read()
    got = hashlib.sha256(data).hexdigest()
    if got != sha256.lower():
        raise ArtifactMismatch(f"forest artifact {path}: sha256 is {got}, the registry says {sha256}; "
                               "refusing to load a model that is not the one registered")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            members = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, KeyError) as err:
        raise ForestError(f"forest artifact {path} cannot be read: {err}") from None
    try:
        meta = json.loads(members.pop("meta").tobytes())
    except (KeyError, ValueError) as err:
        raise ForestError(f"forest artifact {path} has no readable header: {err}") from None
    if meta.pop("format", None) != FORMAT:
        raise ForestError(f"forest artifact {path} is not in the {FORMAT} format")
    for name in ("classes", "feature_names"):
        meta[name] = tuple(meta.get(name, ()))
    known = {f.name for f in fields(Forest)}
    if set(members) != set(ARRAYS) or not set(meta) <= known:
        raise ForestError(f"forest artifact {path} has unexpected members")
    try:
        return Forest(**members, **meta)
    except TypeError as err:
        raise ForestError(f"forest artifact {path}: {err}") from None


# ---------------------------------------------------------------------------------------------- inference


def predict_proba(forest: Forest, X: Any, *, engine: str = "auto") -> Any:
    """Class probabilities (rows, classes) in `forest.classes` order, as the training library's predict_proba.

    X: (rows, features) or one row (features,), NumPy or CuPy. engine: "auto" (compiled on NumPy, levels on
    anything else), "compiled" or "levels"."""
    if not forest.is_classifier:
        raise ForestError("predict_proba needs a classifier; this forest is a regressor (use predict)")
    xp, score = _scores(forest, X, engine)
    if forest.link == "sigmoid":
        p = 1.0 / (1.0 + xp.exp(-forest.sigmoid * score[:, 0]))
        return xp.stack((1.0 - p, p), axis=1)
    return score


def predict(forest: Forest, X: Any, *, engine: str = "auto") -> Any:
    """A regressor's values (rows,); a classifier's most probable class label per row."""
    if forest.is_classifier:
        proba = predict_proba(forest, X, engine=engine)
        return _module(proba).asarray(forest.classes)[proba.argmax(axis=1)]
    _, score = _scores(forest, X, engine)
    return score[:, 0]


def _scores(forest: Forest, X: Any, engine: str) -> tuple[ModuleType, Any]:
    """Leaf values summed over the trees in tree order (the libraries' order), averaged where the model does."""
    xp = _module(X)
    X = xp.asarray(X, dtype=xp.float64)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != forest.n_features:
        raise ForestError(f"X must be shaped (rows, {forest.n_features}), not {tuple(X.shape)}")
    # What the library's predictor compares: float32 copies (scikit-learn), or tiny values read as 0 (LightGBM).
    if forest.float32_inputs:
        X = X.astype(xp.float32).astype(xp.float64)
    if forest.snap_zero:
        X = xp.where(xp.abs(X) <= ZERO_THRESHOLD, 0.0, X)  # NaN stays NaN: a comparison with NaN is false
    if engine == "auto":
        engine = "compiled" if xp is np else "cuda"
    if engine == "compiled":
        if xp is not np:
            raise ForestError("the compiled engine runs on NumPy arrays; use engine='cuda' on the GPU")
        total = _sums_compiled(forest, np.ascontiguousarray(X))
    elif engine == "cuda":
        if xp is np:
            raise ForestError("the cuda engine runs on CuPy arrays; use engine='compiled' on the CPU")
        from gpu_kernels.cuda_indicators import cupy_launcher

        total = sums_cuda(forest, X, xp, cupy_launcher(CUDA_SOURCE))
    elif engine == "levels":
        total = _sums_levels(forest if _module(forest.feature) is xp else forest.on(xp), X, xp)
    else:
        raise ForestError(f"unknown engine {engine!r} (auto, compiled, cuda or levels)")
    return xp, total / forest.n_trees if forest.average else total


def _module(x: Any) -> ModuleType:
    """CuPy for CuPy arrays, NumPy for anything else (lists included)."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _sums_levels(forest: Forest, X: Any, xp: ModuleType) -> Any:
    """All rows × trees step down one level per pass; a leaf points to itself, so `depth` passes reach every leaf."""
    n, trees = X.shape[0], forest.n_trees
    feature = xp.maximum(forest.feature, 0)  # a leaf reads any feature and stays where it is
    zero_missing = bool(forest.zero_missing.any())
    roots = forest.roots.astype(xp.int64)[None, :]
    out = xp.empty((n, forest.value.shape[1]), dtype=xp.float64)
    step = max(1, LEVEL_CELLS // trees)
    for lo in range(0, n, step):
        x = X[lo : lo + step]
        rows = xp.arange(x.shape[0])[:, None]
        node = xp.broadcast_to(roots, (x.shape[0], trees))
        for _ in range(forest.depth):
            v = x[rows, feature[node]]
            missing = xp.isnan(v)
            if zero_missing:  # (after snap_zero, "zero" is exactly 0.0)
                missing |= forest.zero_missing[node] & (v == 0.0)
            go_left = xp.where(missing, forest.nan_left[node], v <= forest.threshold[node])
            node = xp.where(go_left, forest.left[node], forest.right[node])
        leaf_values = forest.value[node]  # (rows, trees, K)
        acc = xp.zeros((x.shape[0], forest.value.shape[1]), dtype=xp.float64)
        for t in range(trees):  # in tree order, as the libraries add (a pairwise sum differs in the last bits)
            acc += leaf_values[:, t, :]
        out[lo : lo + step] = acc
    return out


def sums_cuda(forest: Forest, X: Any, xp: ModuleType, launch: Any) -> Any:
    """The `cuda` engine's leaf sums (before averaging): `forest.cu` launched by `launch(kernel, threads, *args)`
    over arrays of `xp` (CuPy; NumPy with the host build of the same source, in the tests)."""
    lay = forest.__dict__.get("_device_layout")
    if lay is None or _module(lay.word) is not xp:
        on_host = forest if isinstance(forest.feature, np.ndarray) else \
            replace(forest, **{name: getattr(forest, name).get() for name in ARRAYS})  # CuPy tables
        h = _layout(on_host)
        lay = _Layout(*(xp.ascontiguousarray(xp.asarray(a)) for a in (h.threshold, h.word, h.value, h.roots, h.depth)))
        object.__setattr__(forest, "_device_layout", lay)
    real = np.float32 if forest.float32_inputs else np.float64
    X = xp.ascontiguousarray(X, dtype=real)  # exact for float32_inputs: X holds float32 values already
    rows, k_out = X.shape[0], lay.value.shape[1]
    out = xp.zeros((rows, k_out), dtype=np.float64)
    kernel = "sq_forest_f32" if forest.float32_inputs else "sq_forest_f64"
    launch(kernel, rows, X, np.int64(rows), np.int64(X.shape[1]), lay.roots, lay.depth, np.int64(len(lay.roots)),
           lay.threshold, lay.word, lay.value, np.int64(k_out), out)
    return out


# The compiled engine walks a copy of the tables laid out for speed: per tree in breadth-first order, so a
# node's children are adjacent (child = first + went_right) and one int64 word per node holds the feature
# (bits 0-23), where NaN goes (bit 24: left), zero-as-missing (bit 25) and the first child (bits 32-63). A
# leaf is its own first child with threshold +inf and NaN-left, so it stays put: every row takes exactly the
# tree's depth in steps, without branches, and several rows step side by side to hide memory latency.


@dataclass(frozen=True)
class _Layout:
    threshold: np.ndarray  # (N,) float64, or float32 (rounded down) for forests that compare float32 copies
    word: np.ndarray  # (N,) int64
    value: np.ndarray  # (N, K) float64, reordered with the nodes
    roots: np.ndarray  # (T,) int64
    depth: np.ndarray  # (T,) int64 per tree


def _layout(forest: Forest) -> _Layout:
    cached = forest.__dict__.get("_compiled_layout")  # derived from immutable tables: safe to keep with them
    if cached is None:
        n = forest.n_nodes
        threshold, word, order = np.empty(n), np.empty(n, np.int64), np.empty(n, np.int64)
        roots, depth = np.empty(forest.n_trees, np.int64), np.empty(forest.n_trees, np.int64)
        _breadth_first(forest.feature, forest.threshold, forest.left, forest.right, forest.nan_left,
                       forest.zero_missing, forest.roots, threshold, word, order, roots, depth)
        if forest.float32_inputs:
            threshold = _float32_below(threshold)
        cached = _Layout(threshold, word, np.ascontiguousarray(forest.value[order]), roots, depth)
        object.__setattr__(forest, "_compiled_layout", cached)
    return cached


def _float32_below(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 at or below each threshold: for a float32 x, x <= t exactly when x <= that value,
    so forests that compare float32 copies (scikit-learn, cuML) walk on half the bytes, with the same result."""
    down = threshold.astype(np.float32)
    over = down > threshold  # rounded up: step down once
    down[over] = np.nextafter(down[over], np.float32(-np.inf))
    return down


def _sums_compiled(forest: Forest, X: np.ndarray) -> np.ndarray:
    lay = _layout(forest)
    if forest.float32_inputs:
        X = np.ascontiguousarray(X, dtype=np.float32)  # exact: X holds float32 values already
    out = np.zeros((X.shape[0], forest.value.shape[1]), dtype=np.float64)
    # Rows without NaN, through a forest without zero-as-missing splits, never take a default direction: the
    # walk skips the missing-value test (one pass over X to know; the same leaves either way).
    zero_missing = forest.__dict__.get("_any_zero_missing")
    if zero_missing is None:  # immutable tables: computed once
        zero_missing = bool(np.asarray(forest.zero_missing).any())
        object.__setattr__(forest, "_any_zero_missing", zero_missing)
    plain = not zero_missing and not np.isnan(X).any()
    if X.shape[0] < _SERIAL_ROWS:
        _sum_block(0, X.shape[0], X, lay.roots, lay.depth, lay.threshold, lay.word, lay.value, out, plain)
    else:
        _sum_parallel(X, lay.roots, lay.depth, lay.threshold, lay.word, lay.value, out, plain)
    return out


@njit(cache=True, nogil=True)
def _breadth_first(feature, threshold, left, right, nan_left, zero_missing, roots_in, thr_out, word_out, order,
                   roots_out, depth_out):  # pragma: no cover
    n = feature.shape[0]
    new_of = np.empty(n, np.int64)
    level = np.zeros(n, np.int64)
    pos = 0
    for t in range(roots_in.shape[0]):
        roots_out[t] = pos
        order[pos] = roots_in[t]
        level[pos] = 0
        head, pos, deepest = pos, pos + 1, 0
        while head < pos:
            old = order[head]
            new_of[old] = head
            deepest = max(deepest, level[head])
            if feature[old] >= 0:
                order[pos], order[pos + 1] = left[old], right[old]
                level[pos] = level[pos + 1] = level[head] + 1
                pos += 2
            head += 1
        depth_out[t] = deepest
    for new in range(n):
        old = order[new]
        if feature[old] >= 0:
            thr_out[new] = threshold[old]
            word_out[new] = (feature[old] | (np.int64(nan_left[old]) << 24) | (np.int64(zero_missing[old]) << 25)
                             | (new_of[left[old]] << 32))
        else:
            thr_out[new] = np.inf
            word_out[new] = (np.int64(1) << 24) | (np.int64(new) << 32)


_GROUP = 8  # rows stepping side by side through one tree


@njit(cache=True, nogil=True)
def _sum_block(lo, hi, X, roots, depth, threshold, word, value, out, plain):  # pragma: no cover
    node = np.empty(_GROUP, np.int64)
    k_out = value.shape[1]
    for t in range(roots.shape[0]):  # tree-major: one tree's nodes stay in cache for the whole block
        for g0 in range(lo, hi, _GROUP):
            m = min(_GROUP, hi - g0)
            node[:m] = roots[t]
            for _ in range(depth[t]):
                if plain:  # no NaN in X, no zero-as-missing split: x <= threshold decides every step
                    for j in range(m):
                        w = word[node[j]]
                        node[j] = (w >> 32) + (X[g0 + j, w & 0xFFFFFF] > threshold[node[j]])
                    continue
                for j in range(m):
                    w = word[node[j]]
                    x = X[g0 + j, w & 0xFFFFFF]
                    missing = math.isnan(x) or ((w >> 25) & 1 == 1 and x == 0.0)
                    right = ((w >> 24) & 1 == 0) if missing else not x <= threshold[node[j]]
                    node[j] = (w >> 32) + right
            for j in range(m):
                for k in range(k_out):
                    out[g0 + j, k] += value[node[j], k]


@njit(cache=True, nogil=True, parallel=True)
def _sum_parallel(X, roots, depth, threshold, word, value, out, plain):  # pragma: no cover
    n = X.shape[0]
    blocks = (n + _BLOCK - 1) // _BLOCK
    for b in prange(blocks):
        _sum_block(b * _BLOCK, min(n, (b + 1) * _BLOCK), X, roots, depth, threshold, word, value, out, plain)

"""Training algorithms by name (`random_forest`, ...) and the backends that fit them (LightGBM, scikit-learn, cuML).

The job plane and `train.train` only look an algorithm up here, so another model family is one
`register_algorithm` call away, with no change to the job plane. An algorithm checks and completes its
hyperparameters; each backend fits arrays into a `Forest` (plain node tables) plus feature importances.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gpu_kernels.forest import Forest
from processors.errors import BackendUnavailable, InvalidCommand
from schemas.spec import Param

Task = Literal["classifier", "regressor"]


@dataclass(frozen=True)
class Fitted:
    """A trained model as node tables, and how much each feature contributed (non-negative, sums to 1 or 0).
    `model` is the library's own fitted object, for side-by-side checks; it is never stored or shipped."""

    forest: Forest
    importances: np.ndarray
    model: Any = None


# fit(X, y, task, hyperparameters as resolved by the algorithm, feature names) -> Fitted
FitFunction = Callable[[np.ndarray, np.ndarray, Task, Mapping[str, Any], Sequence[str]], Fitted]


@dataclass(frozen=True)
class Backend:
    """One library that fits an algorithm: `device` is "cpu" or "gpu"; `unavailable()` says why it cannot run
    here (a missing package, no GPU), or None when it can."""

    name: str
    device: Literal["cpu", "gpu"]
    fit: FitFunction
    unavailable: Callable[[], str | None]


@dataclass(frozen=True)
class Algorithm:
    """A model family: `resolve(hyperparams, n_features)` returns the complete hyperparameters (defaults filled
    in, InvalidCommand for unknown names or bad values); `backends` in order of preference per device."""

    name: str
    resolve: Callable[[Mapping[str, Param], int], dict[str, Any]]
    backends: tuple[Backend, ...]


_ALGORITHMS: dict[str, Algorithm] = {}


def register_algorithm(name: str, algorithm: Algorithm) -> None:
    if name in _ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is already registered")
    _ALGORITHMS[name] = algorithm


def get_algorithm(name: str) -> Algorithm:
    _load_builtin()
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise InvalidCommand(f"unknown algorithm {name!r} (known: {', '.join(sorted(_ALGORITHMS))})") from None


def pick_backend(algorithm: Algorithm, requested: str) -> Backend:
    """requested: "cpu", "gpu", "auto" (the GPU when one of its backends can run, else the CPU) or a backend's
    own name ("sklearn"). BackendUnavailable when nothing asked for can run here."""
    named = [b for b in algorithm.backends if b.name == requested]
    if named:
        candidates = named
    elif requested in ("cpu", "gpu"):
        candidates = [b for b in algorithm.backends if b.device == requested]
    elif requested == "auto":
        candidates = [b for b in algorithm.backends if b.device == "gpu"] + \
                     [b for b in algorithm.backends if b.device == "cpu"]
    else:
        names = ", ".join(["auto", "cpu", "gpu"] + [b.name for b in algorithm.backends])
        raise InvalidCommand(f"unknown backend {requested!r} for {algorithm.name} (one of {names})")
    reasons = []
    for backend in candidates:
        reason = backend.unavailable()
        if reason is None:
            return backend
        reasons.append(f"{backend.name}: {reason}")
    raise BackendUnavailable(f"no {requested} backend for {algorithm.name} can run here ({'; '.join(reasons)})")


def cpu_threads() -> int:
    """The CPUs this process may use (a container's or taskset's limit, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _load_builtin() -> None:
    # The built-in families register themselves on import; imported here, late, so they can import this module.
    from processors.training import random_forest  # noqa: F401

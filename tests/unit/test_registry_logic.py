"""Promote and rollback on the registry view (the Kafka round trip is in tests/integration/test_models.py), and
what Predict answers for a model it cannot score."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from gpu_kernels.forest_export import from_sklearn
from processors.errors import InvalidCommand
from processors.predict_service import PredictService
from processors.registry import Registry, load_scorer
from schemas.records import Label, ModelVersion, PredictRequest


def version(v: int, aliases: tuple[str, ...] = ()) -> ModelVersion:
    return ModelVersion("m", v, f"/a/m/{v}", "0" * 64, ("rsi_14",), Label("direction", 5), 1_800_000_000_000,
                        aliases=aliases)


def apply(reg: Registry, records: list[ModelVersion]) -> None:
    for r in records:
        reg.apply(r)


def test_promote_then_rollback() -> None:
    reg = Registry()
    for v in (1, 2, 3):
        reg.apply(version(v))
    assert reg.active("m") is None and reg.next_version("m") == 4
    with pytest.raises(InvalidCommand, match="no active version"):
        reg.get("m")
    apply(reg, reg.promote("m", 1))
    assert reg.get("m").version == 1
    apply(reg, reg.promote("m", 3))
    assert reg.get("m").version == 3 and "previous:1" in reg.get("m").aliases
    assert "active" not in reg.versions["m"][1].aliases
    assert reg.promote("m", 3) == []  # already active: nothing to write
    apply(reg, reg.rollback("m"))
    assert reg.get("m").version == 1
    assert reg.versions["m"][3].aliases == ()
    with pytest.raises(InvalidCommand, match="no earlier active version"):
        reg.rollback("m")
    with pytest.raises(InvalidCommand, match="no version 9"):
        reg.promote("m", 9)


def test_predict_with_a_regressor_model_is_answered_with_an_error(tmp_path: Path) -> None:
    """A forward_return model (a regressor) has no P(up): Predict answers the requester with the reason, and
    the service goes on (it used to raise out of the request thread and stop the predictor)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2))
    model = RandomForestRegressor(n_estimators=3, max_depth=3, random_state=0).fit(x, x[:, 0])
    forest = from_sklearn(model, ["rsi_14", "obv"])
    path = str(tmp_path / "forest.npz")
    digest = forest.save(path)
    reg = Registry()
    reg.apply(ModelVersion("ret", 1, path, digest, ("rsi_14", "obv"), Label("forward_return", 5), 1_800_000_000_000,
                           aliases=("active",)))
    service = PredictService(source=None, sink=None, responses_topic="r", dlq_topic="d",  # type: ignore[arg-type]
                             registry=SimpleNamespace(registry=reg), loader=load_scorer,  # type: ignore[arg-type]
                             store=None, default_interval="1m")
    answer = service.answer(PredictRequest("c1", "ret", rows=({"rsi_14": 50.0, "obv": 1.0},)))
    assert "regressor" in answer["error"] and answer["correlation_id"] == "c1"

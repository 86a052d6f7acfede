"""Promote and rollback on the registry view (the Kafka round trip is in tests/integration/test_models.py and
test_model_promotion.py), what Predict answers for a model it cannot score, and which version the predictor
serves when the active one is refused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from gpu_kernels.forest import ArtifactMismatch
from gpu_kernels.forest_export import from_sklearn
from processors.errors import InvalidCommand, ProcessorError
from processors.predict_service import PredictService
from processors.prediction_processor import REFUSED, PredictionProcessor, PredictionTopics
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


class _Predictor:
    """A PredictionProcessor on a registry view and a loader that refuses the versions in `tampered`."""

    def __init__(self, reg: Registry, tampered: set[int]) -> None:
        self.tampered = tampered
        self.loaded: list[int] = []
        self.processor = PredictionProcessor(
            "m", "1d", PredictionTopics("f", "p", "f.dlq"),
            source_factory=lambda _on_assign, _on_revoke: None,  # type: ignore[arg-type,return-value]
            sink_factory=lambda: None,  # type: ignore[arg-type,return-value]
            registry=SimpleNamespace(registry=reg, refresh=lambda: False),  # type: ignore[arg-type]
            loader=self.load)

    def load(self, v: ModelVersion) -> str:
        if v.version in self.tampered:
            raise ArtifactMismatch(f"forest artifact {v.artifact}: sha256 is 1234, the registry says {v.sha256}")
        self.loaded.append(v.version)
        return f"scorer v{v.version}"

    def serving(self) -> int | None:
        assert self.processor._ready()
        return self.processor.version.version if self.processor.version else None


def refusals() -> float:
    return float(REFUSED.labels("m")._value.get())


def test_a_refused_promotion_keeps_the_served_version_and_is_tried_again_once_promoted_again(
        caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry()
    for v in (1, 2):
        reg.apply(version(v))
    apply(reg, reg.promote("m", 1))
    predictor = _Predictor(reg, tampered={2})
    assert predictor.serving() == 1
    before = refusals()
    apply(reg, reg.promote("m", 2))
    assert predictor.serving() == 1 and predictor.serving() == 1  # refused once, not reloaded every batch
    assert refusals() == before + 1 and predictor.loaded == [1]
    assert "model m v2 refused: forest artifact /a/m/2: sha256 is 1234" in caplog.text
    assert "still serving v1" in caplog.text
    apply(reg, reg.rollback("m"))
    predictor.tampered.clear()  # the artifact put back: promoting v2 again loads it
    assert predictor.serving() == 1
    apply(reg, reg.promote("m", 2))
    assert predictor.serving() == 2 and predictor.loaded == [1, 2]


def test_starting_while_a_refused_version_is_active_serves_the_version_it_replaced(
        caplog: pytest.LogCaptureFixture) -> None:
    """A predictor (re)started while a tampered version is active would otherwise exit, and crash-loop."""
    reg = Registry()
    for v in (1, 2, 3):
        reg.apply(version(v))
    for v in (1, 2, 3):
        apply(reg, reg.promote("m", v))
    before = refusals()
    assert _Predictor(reg, tampered={3, 2}).serving() == 1  # back along previous:2, previous:1
    assert refusals() == before + 2
    assert "model m v3 refused" in caplog.text and "serving v1, the version active before it" in caplog.text
    with pytest.raises(ProcessorError, match=r"model m v3 refused: .*sha256"):  # nothing verified to serve
        _Predictor(reg, tampered={1, 2, 3}).processor._ready()

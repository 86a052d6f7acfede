"""Promote and rollback on the registry view (the Kafka round trip is in tests/integration/test_models.py)."""

from __future__ import annotations

import pytest

from processors.errors import InvalidCommand
from processors.registry import Registry
from schemas.records import Label, ModelVersion


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

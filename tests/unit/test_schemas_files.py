"""The shipped JSON Schema and Avro files are exactly what the record dataclasses generate."""

from __future__ import annotations

import fastavro
import pytest
from jsonschema import Draft202012Validator

from schemas.generate import rendered
from schemas.records import RECORD_TYPES
from schemas.registry import SCHEMA_IDS, load_avro_schema, load_json_schema


def test_shipped_files_match_the_dataclasses() -> None:
    stale = [path.name for path, text in rendered().items() if not path.exists() or path.read_text() != text]
    assert not stale, f"run `make schemas`: these files drift from schemas/records.py: {stale}"


@pytest.mark.parametrize("name", sorted(RECORD_TYPES))
def test_every_record_has_valid_json_schema_and_avro(name: str) -> None:
    Draft202012Validator.check_schema(load_json_schema(name))
    fastavro.parse_schema(load_avro_schema(name))


def test_schema_ids_are_unique_and_cover_every_record() -> None:
    assert len(set(SCHEMA_IDS.values())) == len(SCHEMA_IDS)
    assert {name for name, _ in SCHEMA_IDS} == set(RECORD_TYPES)

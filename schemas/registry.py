"""Schema versions and the Avro schema ids of Confluent's wire framing, fixed per (record, version).

StreamQuant ships its schemas rather than asking a Schema Registry at run time, so each (record,
version) has a stable id here. A deployment that runs a registry registers these files under the
same ids (or maps them); the codecs only need the id → schema lookup below.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from schemas.errors import UnknownSchema
from schemas.records import RECORD_TYPES

# (record name, version) -> Confluent schema id. Append only: an id is never reused.
SCHEMA_IDS: dict[tuple[str, int], int] = {
    ("Tick", 1): 1,
    ("Bar", 1): 2,
    ("FeatureVector", 1): 3,
    ("Prediction", 1): 4,
    ("BacktestCommand", 1): 5,
    ("TrainCommand", 1): 6,
    ("CancelCommand", 1): 7,
    ("JobStatus", 1): 8,
    ("BacktestResult", 1): 9,
    ("TrainResult", 1): 10,
    ("ModelVersion", 1): 11,
    ("PredictRequest", 1): 12,
    ("PredictResponse", 1): 13,
    ("FeaturesCommand", 1): 14,
    ("FeaturesResult", 1): 15,
    ("PromoteCommand", 1): 16,
    ("PromoteResult", 1): 17,
}
CURRENT_VERSION: dict[str, int] = {name: 1 for name in RECORD_TYPES}


def file_stem(name: str, version: int) -> str:
    snake = "".join("_" + ch.lower() if ch.isupper() else ch for ch in name).lstrip("_")
    return f"{snake}.v{version}"


@cache
def load_json_schema(name: str, version: int = 1) -> dict[str, Any]:
    """The shipped JSON Schema of a record version."""
    _check(name, version)
    text = resources.files("schemas").joinpath("json", file_stem(name, version) + ".json").read_text()
    return json.loads(text)


@cache
def load_avro_schema(name: str, version: int = 1) -> dict[str, Any]:
    """The shipped Avro schema of a record version."""
    _check(name, version)
    text = resources.files("schemas").joinpath("avro", file_stem(name, version) + ".avsc").read_text()
    return json.loads(text)


def schema_id(name: str, version: int = 1) -> int:
    _check(name, version)
    return SCHEMA_IDS[(name, version)]


def by_schema_id(schema_id_: int) -> tuple[str, int]:
    for key, value in SCHEMA_IDS.items():
        if value == schema_id_:
            return key
    raise UnknownSchema(f"unknown Avro schema id {schema_id_}")


def _check(name: str, version: int) -> None:
    if (name, version) not in SCHEMA_IDS:
        raise UnknownSchema(f"unknown record {name} v{version}")

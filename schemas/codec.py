"""Record codecs: bytes ⇄ frozen records for every message type, in JSON or Confluent-framed Avro.

Decoding validates against the record's shipped JSON Schema (whatever the wire format), so a record
that comes out of a codec is always valid. Commands and results are low-volume; ticks have their own
columnar codec in `schemas.ticks`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import fastavro
import msgspec
import orjson
from jsonschema import Draft202012Validator

from schemas.errors import InvalidMessage, UnknownSchema
from schemas.registry import by_schema_id, load_avro_schema, load_json_schema, schema_id
from schemas.spec import from_dict, to_dict
from schemas.wire import WireFormat, frame_avro, sniff, unframe_avro

T = TypeVar("T")

# What fastavro raises on truncated or corrupt payloads (found by the fuzz tests).
_AVRO_CORRUPT = (EOFError, ValueError, UnicodeDecodeError, IndexError, OverflowError, MemoryError)

DEFAULT_MAX_BYTES = 1_000_000

# jsonschema keyword -> the error class a dead letter or a rejected status carries.
_ERROR_CLASS = {
    "required": "missing_field",
    "additionalProperties": "unknown_field",
    "type": "wrong_type",
    "anyOf": "wrong_type",
    "enum": "invalid_value",
    "pattern": "invalid_value",
    "minLength": "invalid_value",
    "maxLength": "invalid_value",
    "minItems": "invalid_value",
    "minimum": "out_of_range",
    "maximum": "out_of_range",
    "exclusiveMinimum": "out_of_range",
}


@dataclass(frozen=True, slots=True)
class Reject:
    """One message of a batch that could not be decoded: its index in the batch and why."""

    index: int
    error_class: str
    reason: str


@dataclass(frozen=True, slots=True)
class DecodedRecords(Generic[T]):
    """The good records of a batch (with their batch indices) and the rejects."""

    records: list[T]
    indices: list[int]
    rejects: list[Reject]


def check_finite(value: Any, path: str = "") -> None:
    """Rejects NaN and infinities anywhere in decoded data (Avro doubles can carry them)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMessage("non_finite", f"{path or 'value'} is {value}")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_finite(v, f"{path}[{i}]")


class RecordCodec(Generic[T]):
    """Encodes records in one wire format; decodes either format (sniffed by the first byte)."""

    def __init__(
        self,
        record_type: type[T],
        wire: WireFormat = "json",
        *,
        version: int = 1,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.record_type = record_type
        self.name = record_type.__name__
        self.wire = wire
        self.version = version
        self.max_bytes = max_bytes
        self._validator = Draft202012Validator(load_json_schema(self.name, version))
        self._avro = fastavro.parse_schema(load_avro_schema(self.name, version))
        self._schema_id = schema_id(self.name, version)

    # ------------------------------------------------------------------ encode

    def encode(self, record: T) -> bytes:
        data = to_dict(record)
        if self.wire == "json":
            return orjson.dumps(data)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self._avro, data)
        return frame_avro(self._schema_id, buf.getvalue())

    # ------------------------------------------------------------------ decode

    def decode(self, data: bytes) -> T:
        """One message to a valid record, or `InvalidMessage` saying why not."""
        if data is None:
            raise InvalidMessage("empty", "message has no value (tombstone)")
        if len(data) > self.max_bytes:
            raise InvalidMessage("too_large", f"{len(data)} bytes exceeds the limit of {self.max_bytes}")
        obj = self._decode_avro(data) if sniff(data) == "avro" else self._decode_json(data)
        return self.decode_obj(obj)

    def decode_obj(self, obj: Any) -> T:
        """Already-parsed data (a dict from JSON, say) to a valid record, or `InvalidMessage`."""
        self.validate(obj)
        return cast(T, from_dict(self.record_type, obj))

    def decode_many(self, values: Sequence[bytes]) -> DecodedRecords[T]:
        records: list[T] = []
        indices: list[int] = []
        rejects: list[Reject] = []
        for i, value in enumerate(values):
            try:
                records.append(self.decode(value))
                indices.append(i)
            except InvalidMessage as err:
                rejects.append(Reject(i, err.error_class, err.reason))
        return DecodedRecords(records, indices, rejects)

    def validate(self, obj: Any) -> None:
        """Checks decoded data against the record's JSON Schema (and finiteness)."""
        if not isinstance(obj, dict):
            raise InvalidMessage("not_object", f"expected a JSON object, got {type(obj).__name__}")
        error = next(iter(self._validator.iter_errors(obj)), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "message"
            raise InvalidMessage(_ERROR_CLASS.get(str(error.validator), "invalid_value"), f"{where}: {error.message}")
        check_finite(obj)

    def _decode_json(self, data: bytes) -> Any:
        try:
            return msgspec.json.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as err:  # msgspec raises the latter for non-UTF-8
            raise InvalidMessage("not_json", f"not valid JSON: {err}") from None

    def _decode_avro(self, data: bytes) -> Any:
        return read_avro(data, self._avro, self.name, self.version)


def read_avro(data: bytes, parsed_schema: Any, name: str, version: int) -> Any:
    """A Confluent-framed Avro message that must hold record `name` v`version`, as plain data."""
    sid, payload = unframe_avro(data)
    found = by_schema_id_or_reject(sid)
    if found != (name, version):
        raise InvalidMessage("unknown_schema", f"schema id {sid} is {found[0]} v{found[1]}, not {name}")
    buf = io.BytesIO(payload)
    try:
        obj = fastavro.schemaless_reader(buf, parsed_schema, None)
    except _AVRO_CORRUPT as err:
        raise InvalidMessage("bad_avro", f"cannot decode Avro payload: {type(err).__name__}") from None
    if buf.tell() != len(payload):
        raise InvalidMessage("bad_avro", f"{len(payload) - buf.tell()} trailing bytes after the record")
    return obj


def by_schema_id_or_reject(sid: int) -> tuple[str, int]:
    try:
        return by_schema_id(sid)
    except UnknownSchema:
        raise InvalidMessage("unknown_schema", f"unknown Avro schema id {sid}") from None

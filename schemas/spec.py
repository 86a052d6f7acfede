"""Turns the frozen record dataclasses into JSON Schema and Avro, so the Python types stay the one source.

Supported field types: str, int, float, bool, `X | None`, `tuple[X, ...]` (arrays), `dict[str, X]`, `Literal[...]`,
nested record dataclasses and the `Param` alias (a scalar or a list of scalars, used for strategy and
model parameters). Constraints ride in `dataclasses.field(metadata=c(...))`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

AVRO_NAMESPACE = "io.streamquant.v1"

Scalar = bool | int | float | str
# A parameter value: a scalar, or a list of scalars (a grid to sweep).
Param = Scalar | tuple[Scalar, ...]


def c(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    min_items: int | None = None,
    doc: str | None = None,
) -> dict[str, Any]:
    """Field constraints, spelled as JSON Schema keywords."""
    out: dict[str, Any] = {}
    for key, value in (
        ("minimum", minimum),
        ("maximum", maximum),
        ("exclusiveMinimum", exclusive_minimum),
        ("minLength", min_length),
        ("maxLength", max_length),
        ("pattern", pattern),
        ("minItems", min_items),
        ("description", doc),
    ):
        if value is not None:
            out[key] = value
    return {"constraints": out}


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != len(get_args(tp)):
            inner = args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
            return True, inner
    return False, tp


def _is_param(tp: Any) -> bool:
    return tp == Param


def _is_scalar_union(tp: Any) -> bool:
    return tp == Scalar


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# ---------------------------------------------------------------- JSON Schema


def _json_type(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    optional, inner = _is_optional(tp)
    if optional:
        return {"anyOf": [_json_type(inner, defs), {"type": "null"}]}
    if _is_param(tp):
        return {"anyOf": [_json_type(Scalar, defs), {"type": "array", "items": _json_type(Scalar, defs)}]}
    if _is_scalar_union(tp):
        return {"type": ["boolean", "integer", "number", "string"]}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    origin = get_origin(tp)
    if origin is Literal:
        return {"type": "string", "enum": list(get_args(tp))}
    if origin in (list, tuple):
        item = get_args(tp)[0]
        return {"type": "array", "items": _json_type(item, defs)}
    if origin is dict:
        _, value = get_args(tp)
        return {"type": "object", "additionalProperties": _json_type(value, defs)}
    if _is_record(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            defs[name] = _json_object(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"unsupported field type {tp!r}")


def _json_object(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required: list[str] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        schema = _json_type(hints[f.name], defs)
        constraints = f.metadata.get("constraints", {})
        if constraints:
            optional, _ = _is_optional(hints[f.name])
            if optional:
                schema["anyOf"][0].update(constraints)
            else:
                schema.update(constraints)
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if f.default is not dataclasses.MISSING and f.default is not None:
            schema["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            schema["default"] = _plain_default(f.default_factory())
        if not has_default:
            required.append(f.name)
        props[f.name] = schema
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    if cls.__doc__:
        out["description"] = cls.__doc__.strip().splitlines()[0]
    return out


def json_schema(cls: type, version: int) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a record type."""
    defs: dict[str, Any] = {}
    body = _json_object(cls, defs)
    doc: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:streamquant:{cls.__name__}:v{version}",
        "title": cls.__name__,
        **body,
    }
    if defs:
        doc["$defs"] = defs
    return doc


# ---------------------------------------------------------------- Avro


_AVRO_SCALARS: list[Any] = ["boolean", "long", "double", "string"]


def _avro_type(tp: Any, named: set[str]) -> Any:
    optional, inner = _is_optional(tp)
    if optional:
        inner_avro = _avro_type(inner, named)
        members = inner_avro if isinstance(inner_avro, list) else [inner_avro]
        return ["null", *members]
    if _is_param(tp):
        return [*_AVRO_SCALARS, {"type": "array", "items": list(_AVRO_SCALARS)}]
    if _is_scalar_union(tp):
        return list(_AVRO_SCALARS)
    if tp is str:
        return "string"
    if tp is bool:
        return "boolean"
    if tp is int:
        return "long"
    if tp is float:
        return "double"
    origin = get_origin(tp)
    if origin is Literal:
        # Avro enum symbols must be identifiers ("1s" is not), so enums travel as strings and the
        # JSON Schema check after decoding enforces the allowed values.
        return "string"
    if origin in (list, tuple):
        item = get_args(tp)[0]
        return {"type": "array", "items": _avro_type(item, named)}
    if origin is dict:
        _, value = get_args(tp)
        return {"type": "map", "values": _avro_type(value, named)}
    if _is_record(tp):
        if tp.__name__ in named:
            return f"{AVRO_NAMESPACE}.{tp.__name__}"
        return _avro_record(tp, named)
    raise TypeError(f"unsupported field type {tp!r}")


def _avro_record(cls: type, named: set[str]) -> dict[str, Any]:
    named.add(cls.__name__)
    hints = _hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        entry: dict[str, Any] = {"name": f.name, "type": _avro_type(hints[f.name], named)}
        optional, _ = _is_optional(hints[f.name])
        if optional:
            entry["default"] = None
        elif f.default is not dataclasses.MISSING:
            entry["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            entry["default"] = _plain_default(f.default_factory())
        fields.append(entry)
    out: dict[str, Any] = {"type": "record", "name": cls.__name__, "namespace": AVRO_NAMESPACE, "fields": fields}
    if cls.__doc__:
        out["doc"] = cls.__doc__.strip().splitlines()[0]
    return out


def avro_schema(cls: type) -> dict[str, Any]:
    """The Avro schema (a record) of a record type."""
    return _avro_record(cls, set())


# ---------------------------------------------------------------- dict -> record


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Builds a (nested) record from a dict that already passed the JSON Schema check."""
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name])
    return cls(**kwargs)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    optional, inner = _is_optional(tp)
    if optional:
        return _convert(inner, value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    origin = get_origin(tp)
    if origin in (list, tuple) and not _is_param(tp):
        item = get_args(tp)[0]
        return tuple(_convert(item, v) for v in value)
    if _is_param(tp) and isinstance(value, list):
        return tuple(value)
    if origin is dict:
        _, vt = get_args(tp)
        return {k: _convert(vt, v) for k, v in value.items()}
    if _is_record(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    return value


def to_dict(record: Any) -> dict[str, Any]:
    """A record as plain JSON-able data (tuples become lists)."""
    return _plain(dataclasses.asdict(record))


def _plain_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value

"""Hypothesis strategies that build valid records from their field types and declared constraints."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, get_args, get_origin

from hypothesis import strategies as st

from schemas.spec import Param, Scalar, _is_optional

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
_scalar = st.one_of(st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False),
                    _text)


def _constrained(tp: Any, constraints: dict[str, Any]) -> st.SearchStrategy[Any]:
    if tp is str:
        if "pattern" in constraints:
            return st.from_regex(constraints["pattern"], fullmatch=True)
        return st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                       min_size=constraints.get("minLength", 0), max_size=min(constraints.get("maxLength", 30), 30))
    if tp is int:
        lo = constraints.get("minimum", -(2**62))
        hi = constraints.get("maximum", 2**62)
        return st.integers(int(lo), int(hi))
    if tp is float:
        lo = constraints.get("minimum", constraints.get("exclusiveMinimum"))
        return st.floats(min_value=lo, max_value=constraints.get("maximum", 1e12),
                         exclude_min="exclusiveMinimum" in constraints, allow_nan=False, allow_infinity=False)
    return _of_type(tp, constraints)


def _of_type(tp: Any, constraints: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    constraints = constraints or {}
    optional, inner = _is_optional(tp)
    if optional:
        return st.none() | _constrained(inner, constraints)
    if tp == Param:
        return _scalar | st.lists(_scalar, max_size=4).map(tuple)
    if tp == Scalar:
        return _scalar
    if tp in (str, int, float) and constraints:
        return _constrained(tp, constraints)
    if tp is str:
        return _text
    if tp is int:
        return st.integers(-(2**62), 2**62)
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is bool:
        return st.booleans()
    origin = get_origin(tp)
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin is tuple:
        return st.lists(_of_type(get_args(tp)[0]), min_size=constraints.get("minItems", 0), max_size=4).map(tuple)
    if origin is dict:
        return st.dictionaries(_text, _of_type(get_args(tp)[1]), max_size=4)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return records(tp)
    raise TypeError(f"no strategy for {tp!r}")


def records(cls: type) -> st.SearchStrategy[Any]:
    """Valid instances of a record dataclass."""
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: _of_type(hints[f.name], f.metadata.get("constraints", {}))
        for f in dataclasses.fields(cls)
    }
    return st.builds(cls, **fields)

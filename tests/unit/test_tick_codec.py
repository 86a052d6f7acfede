"""The columnar tick decoder agrees with the per-message reference on any batch, good or bad."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from schemas.errors import InvalidMessage
from schemas.records import Tick
from schemas.tick_decoder import TickDecoder
from schemas.ticks import TickColumns, decode_tick, encode_columns, encode_tick
from tests.strategies import records

GOOD = {"symbol": "AAPL", "ts": 1_700_000_000_000, "price": 189.52, "size": 100}


def reference(values: list[bytes | None], max_bytes: int = 4096) -> tuple[list[Tick], list[int], list[str]]:
    """The obvious loop: decode each message on its own."""
    ticks, idx, classes = [], [], []
    for i, v in enumerate(values):
        try:
            ticks.append(decode_tick(v, max_bytes))
            idx.append(i)
        except InvalidMessage as err:
            classes.append(err.error_class)
    return ticks, idx, classes


def assert_same(values: list[bytes | None], max_bytes: int = 4096) -> None:
    ticks, idx, classes = reference(values, max_bytes)
    got = TickDecoder(max_bytes).decode(values)
    assert got.indices.tolist() == idx
    assert got.ticks.to_records() == ticks
    assert [r.error_class for r in got.rejects] == classes
    assert sorted([*idx, *(r.index for r in got.rejects)]) == list(range(len(values)))


# Messages near the valid ones: every field may be missing, mistyped, out of range or odd.
_field_values: dict[str, st.SearchStrategy[Any]] = {
    "symbol": st.one_of(st.sampled_from(["AAPL", "BRK.B", "BTC-USD", "^GSPC", "", "A B", "x" * 33, "É"]),
                        st.integers(-(2**63), 2**63 - 1), st.none(), st.text(max_size=5)),
    "ts": st.one_of(st.integers(1_600_000_000_000, 1_800_000_000_000), st.integers(-(2**63), 2**63 - 1),
                    st.floats(), st.just(1_700_000_000_000.0), st.text(max_size=3), st.booleans(), st.none()),
    "price": st.one_of(st.floats(), st.integers(-5, 10**6), st.just("1.5"), st.booleans(), st.none(),
                       st.just(0), st.just(1e308)),
    "size": st.one_of(st.floats(), st.integers(-5, 10**6), st.none(), st.just([1])),
    "bid": st.one_of(st.floats(), st.none(), st.integers(-1, 5), st.just("x")),
    "ask": st.one_of(st.floats(), st.none(), st.integers(-1, 5)),
    "exchange": st.one_of(st.none(), st.text(max_size=18), st.integers(0, 9), st.just("")),
    "extra": st.integers(-(2**63), 2**63 - 1),
}


@st.composite
def near_tick(draw: st.DrawFn) -> bytes:
    obj = dict(GOOD)
    for name in draw(st.sets(st.sampled_from(sorted(_field_values)), max_size=3)):
        obj[name] = draw(_field_values[name])
    for name in draw(st.sets(st.sampled_from(["symbol", "ts", "price", "size"]), max_size=1)):
        obj.pop(name, None)
    text = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS) if not any(
        isinstance(v, float) and not math.isfinite(v) for v in obj.values()
    ) else _json_with_nonfinite(obj)
    if draw(st.booleans()):
        text = text.replace(b",", b", ").replace(b":", b" : ")
    if draw(st.integers(0, 20)) == 0:
        text = text.replace(b",", b",\n", 1)
    return text


def _json_with_nonfinite(obj: dict[str, Any]) -> bytes:
    # What a sloppy producer writes: NaN / Infinity literals that strict JSON forbids.
    parts = []
    for k, v in obj.items():
        if isinstance(v, float) and not math.isfinite(v):
            lit = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
            parts.append(f'"{k}": {lit}')
        else:
            parts.append(f'"{k}": {orjson.dumps(v).decode()}')
    return ("{" + ", ".join(parts) + "}").encode()


valid_tick_bytes = records(Tick).map(lambda t: encode_tick(t))
avro_tick_bytes = records(Tick).map(lambda t: encode_tick(t, "avro"))
# Fragments glued together: shapes that once crashed Arrow's reader (a top-level `null` row) live here.
_fragments = st.sampled_from([
    b"null", b"{}", b"[]", b"1", b'"s"', b"\n", b" ", b"}", b"{", b",", b"true", b'"', b"\\", b'","',
    b'{"symbol":"C","exchange":"}', b'{","ts":1700000000000,"price":2,"size":3}',
    b'{"symbol":"A","ts":1700000000000,"price":1,"size":1}',
])
glued = st.lists(_fragments, min_size=1, max_size=5).map(b"".join)

any_message = st.one_of(
    glued,
    valid_tick_bytes,
    near_tick(),
    avro_tick_bytes,
    st.binary(max_size=60),
    st.sampled_from([b"", b" ", b"{}", b"[]", b"null", b"\n", b"{}\n{}", b'{"a":1} {"b":2}', b"\x00\x00\x00\x00\x01",
                     b'{"symbol":"A","ts":99999999999999999999999,"price":1,"size":1}',
                     b'{"symbol":"A","ts":1700000000000,"price":99999999999999999999999,"size":1}',
                     b'{"symbol":"A","ts":1700000000000,"price":1e400,"size":1}',
                     b'{"symbol":"A","symbol":"B","ts":1700000000000,"price":1,"size":1}',
                     b'{"symbol":"A","ts":1700000000000,"price":1,"size":1,"size":-1}',
                     b'{"symbol":"\\ud800","ts":1700000000000,"price":1,"size":1}',
                     b'{"symbol":"\\u0041","ts":1700000000000,"price":1,"size":1}',
                     b'{"symbol":"A","ts":1700000000000,"price":1,"size":1,"bid":null,"exchange":null}',
                     b'{"symbol":"A","ts":1E12,"price":1,"size":1}',
                     b'{"symbol":"A","ts":1700000000000,"price":1,"size":1}  ',
                     b'  {"symbol":"A","ts":1700000000000,"price":1,"size":1}']),
    st.none(),
)


@given(st.lists(any_message, max_size=80))
def test_fast_decoder_agrees_with_the_reference_on_any_batch(values: list[bytes | None]) -> None:
    assert_same(values)


@settings(max_examples=100)  # each example is a batch of up to 125 messages: 300 of them took 25 s of CI
@given(st.lists(valid_tick_bytes, min_size=40, max_size=120), st.lists(any_message, max_size=5),
       st.randoms(use_true_random=False))
def test_a_few_bad_messages_among_many_good(good: list[bytes], bad: list[bytes | None], rnd: Any) -> None:
    values: list[bytes | None] = list(good)
    for b in bad:
        values.insert(rnd.randrange(len(values) + 1), b)
    assert_same(values)


@example(b'"\x80"')  # a string that is not UTF-8: msgspec raised UnicodeDecodeError, which crashed the batch
@example(b'{"symbol":"A\x80","ts":1767225600000,"price":1,"size":1}')
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_decoders(data: bytes) -> None:
    assert_same([data])
    assert_same([data, orjson.dumps(GOOD), data])


@given(records(Tick))
def test_valid_ticks_roundtrip_json_and_avro(tick: Tick) -> None:
    for wire in ("json", "avro"):
        assert decode_tick(encode_tick(tick, wire)) == tick  # type: ignore[arg-type]
        got = TickDecoder().decode([encode_tick(tick, wire)])  # type: ignore[arg-type]
        assert got.ticks.to_records() == [tick]


@pytest.mark.parametrize(
    ("change", "error_class"),
    [
        ({"price": 0}, "out_of_range"),
        ({"price": -1.5}, "out_of_range"),
        ({"size": -1}, "out_of_range"),
        ({"ts": 1_700_000_000}, "out_of_range"),  # seconds, not milliseconds
        ({"ts": 1_700_000_000_000.5}, "wrong_type"),
        ({"symbol": ""}, "invalid_symbol"),
        ({"symbol": "X" * 33}, "invalid_symbol"),
        ({"price": "189.5"}, "wrong_type"),
        ({"venue": "XNAS"}, "unknown_field"),
        ({"bid": -1}, "out_of_range"),
        ({"exchange": "X" * 17}, "invalid_value"),
    ],
)
def test_rejects_name_the_problem(change: dict[str, Any], error_class: str) -> None:
    value = orjson.dumps({**GOOD, **change})
    got = TickDecoder().decode([orjson.dumps(GOOD), value])
    assert len(got.ticks) == 1
    assert [(r.index, r.error_class) for r in got.rejects] == [(1, error_class)]


def test_a_string_cannot_carry_one_message_into_the_next() -> None:
    # Two objects in one message, and two halves joined by a string that swallows the separator: the row
    # count of the joined batch matches, but no row may be credited to the wrong message.
    two = (b'{"symbol":"AAA","ts":1700000000000,"price":1,"size":1},'
           b'{"symbol":"BBB","ts":1700000000000,"price":1,"size":1}')
    opened = b'{"symbol":"CCC","exchange":"}'
    closed = b'{","ts":1700000000000,"price":2,"size":3}'
    assert_same([two, opened, closed])
    assert_same([orjson.dumps(GOOD), two, opened, closed, orjson.dumps(GOOD)])


def test_nan_literal_missing_field_not_json_and_too_large() -> None:
    values = [
        b'{"symbol":"A","ts":1700000000000,"price":NaN,"size":1}',
        b'{"symbol":"A","ts":1700000000000,"size":1}',
        b"\xff\xfe garbage",
        orjson.dumps({**GOOD, "exchange": "X"}) + b" " * 5000,
        None,
    ]
    got = TickDecoder().decode(values)
    assert [r.error_class for r in got.rejects] == ["not_json", "missing_field", "not_json", "too_large", "empty"]


def test_columns_keep_input_order_and_dictionary_encode_symbols() -> None:
    ticks = [Tick("B", 1_700_000_000_000 + i, 10.0 + i, 1.0) if i % 2 else Tick("A", 1_700_000_000_000 + i, 5.0, 2.0,
             bid=4.9, ask=5.1, exchange="XNAS") for i in range(10)]
    values = [encode_tick(t) for t in ticks]
    values.insert(3, b"bad")
    got = TickDecoder().decode(values)
    assert got.ticks.to_records() == ticks
    assert got.indices.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert sorted(got.ticks.symbols) == ["A", "B"]
    assert got.ticks.ts.dtype == np.int64 and got.ticks.price.dtype == np.float64
    assert np.isnan(got.ticks.bid[1]) and got.ticks.exchange_codes[1] == -1


def test_encode_columns_roundtrips() -> None:
    ticks = [Tick("S1", 1_700_000_000_000, 1.25, 3.0, bid=1.2, ask=1.3, exchange="ARCX"),
             Tick("S2", 1_700_000_000_001, 99.5, 0.0)]
    cols = TickColumns.from_records(ticks)
    for wire in ("json", "avro"):
        assert TickDecoder().decode(encode_columns(cols, wire)).ticks.to_records() == ticks  # type: ignore[arg-type]


def test_empty_batch() -> None:
    got = TickDecoder().decode([])
    assert len(got.ticks) == 0 and got.rejects == []

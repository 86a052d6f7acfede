"""Record codecs: every valid record round-trips through JSON and Avro; bad messages get a clear reason."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import RecordCodec
from schemas.errors import InvalidMessage
from schemas.records import RECORD_TYPES, BacktestCommand, DataSource, JobStatus
from schemas.spec import to_dict
from schemas.wire import frame_avro
from tests.strategies import records


def _normalise(obj: Any) -> Any:
    """JSON numbers: an integral float and an int compare equal after a trip through a double field."""
    if isinstance(obj, dict):
        return {k: _normalise(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_normalise(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    return obj


@pytest.mark.parametrize("name", sorted(RECORD_TYPES))
@pytest.mark.parametrize("wire", ["json", "avro"])
def test_valid_records_roundtrip(name: str, wire: str) -> None:
    codec: RecordCodec[Any] = RecordCodec(RECORD_TYPES[name], wire)  # type: ignore[arg-type]

    @given(records(RECORD_TYPES[name]))
    def check(record: Any) -> None:
        data = codec.encode(record)
        back = codec.decode(data)
        assert _normalise(to_dict(back)) == _normalise(to_dict(record))

    check()


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_a_record_decoder(data: bytes) -> None:
    for wire in ("json", "avro"):
        codec: RecordCodec[Any] = RecordCodec(BacktestCommand, wire)  # type: ignore[arg-type]
        try:
            codec.decode(data)
        except InvalidMessage as err:
            assert err.error_class and err.reason


@given(st.binary(max_size=200))
def test_arbitrary_avro_payloads_never_crash(payload: bytes) -> None:
    codec: RecordCodec[Any] = RecordCodec(JobStatus, "avro")
    try:
        codec.decode(frame_avro(8, payload))
    except InvalidMessage as err:
        assert err.error_class


GOOD = {
    "job_id": "5f0c9d2e-1b7a-4c55-9a43-2f1d8e6b7c10",
    "strategy": "trend_following",
    "params": {"fast": [5, 10, 20], "slow": 30, "ma": "sma"},
    "universe": ["GOOG", "MSFT"],
    "start": "2005-01-01",
    "end": "2013-03-01",
    "interval": "1d",
    "data": {"source": "parquet", "path": "bars.parquet"},
    "initial_capital": 100000,
    "fees_bps": 10,
}


def test_the_issue_example_command_decodes_with_defaults() -> None:
    cmd = RecordCodec(BacktestCommand).decode(orjson.dumps(GOOD))
    assert cmd.universe == ("GOOG", "MSFT")
    assert cmd.params["fast"] == (5, 10, 20)
    assert cmd.data == DataSource(source="parquet", path="bars.parquet")
    assert (cmd.execution, cmd.direction, cmd.priority, cmd.backend) == ("close", "long_only", 5, "auto")


@pytest.mark.parametrize(
    ("change", "error_class", "fragment"),
    [
        ({"strategy": None}, "wrong_type", "strategy"),
        ({"universe": []}, "invalid_value", "universe"),
        ({"priority": 12}, "out_of_range", "priority"),
        ({"execution": "open"}, "invalid_value", "execution"),
        ({"bogus": 1}, "unknown_field", "bogus"),
        ({"fees_bps": -1}, "out_of_range", "fees_bps"),
        ({"start": "last tuesday"}, "invalid_value", "start"),
        ({"data": {"source": "ftp"}}, "invalid_value", "data/source"),
    ],
)
def test_invalid_commands_name_the_field(change: dict[str, Any], error_class: str, fragment: str) -> None:
    bad = {**GOOD, **change}
    with pytest.raises(InvalidMessage) as info:
        RecordCodec(BacktestCommand).decode(orjson.dumps(bad))
    assert info.value.error_class == error_class
    assert fragment in info.value.reason


def test_missing_field_and_not_json_and_too_large() -> None:
    codec = RecordCodec(BacktestCommand, max_bytes=2000)
    without_universe = {k: v for k, v in GOOD.items() if k != "universe"}
    with pytest.raises(InvalidMessage, match="universe") as info:
        codec.decode(orjson.dumps(without_universe))
    assert info.value.error_class == "missing_field"
    with pytest.raises(InvalidMessage) as info:
        codec.decode(b"{not json")
    assert info.value.error_class == "not_json"
    with pytest.raises(InvalidMessage) as info:
        codec.decode(b" " * 2001)
    assert info.value.error_class == "too_large"


def test_avro_rejects_nan_and_wrong_schema_id() -> None:
    status = JobStatus(job_id="j1", kind="backtest", state="running", ts=1_700_000_000_000, progress=0.5)
    avro = RecordCodec(JobStatus, "avro")
    data = avro.encode(status)
    assert avro.decode(data) == status
    with pytest.raises(InvalidMessage) as info:
        RecordCodec(BacktestCommand).decode(data)  # a JobStatus frame on a command topic
    assert info.value.error_class == "unknown_schema"
    nan = JobStatus(job_id="j1", kind="backtest", state="running", ts=1_700_000_000_000, progress=float("nan"))
    with pytest.raises(InvalidMessage):
        avro.decode(avro.encode(nan))

"""Wire formats: JSON (the default any client can write) and Avro with Confluent's framing."""

from __future__ import annotations

import struct
from typing import Literal

from schemas.errors import InvalidMessage

WireFormat = Literal["json", "avro"]
AVRO_MAGIC = 0
_HEADER = struct.Struct(">bI")
HEADER_SIZE = _HEADER.size


def frame_avro(schema_id: int, payload: bytes) -> bytes:
    """Confluent framing: magic byte 0, then the schema id as a 4-byte big-endian integer."""
    return _HEADER.pack(AVRO_MAGIC, schema_id) + payload


def unframe_avro(data: bytes) -> tuple[int, memoryview]:
    if len(data) < HEADER_SIZE:
        raise InvalidMessage("bad_framing", f"Avro message of {len(data)} bytes is shorter than its header")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != AVRO_MAGIC:
        raise InvalidMessage("bad_framing", f"magic byte {magic} is not Confluent's 0")
    return schema_id, memoryview(data)[HEADER_SIZE:]


def sniff(data: bytes) -> WireFormat:
    """Which format a message is in: Avro frames start with byte 0, which JSON text never does."""
    return "avro" if data[:1] == b"\x00" else "json"

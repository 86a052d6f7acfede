"""Dead letters keep the original key, bytes and headers and say where they came from and why."""

from __future__ import annotations

import numpy as np

from schemas.tick_decoder import TickDecoder
from streams.dlq import dead_letters_for, header_dict
from streams.source import MessageBatch


def test_rejects_become_dead_letters_with_reason_headers() -> None:
    values = [b'{"symbol":"A","ts":1700000000000,"price":1,"size":1}', b"not json", b'{"symbol":"A"}']
    batch = MessageBatch(
        topics=["ticks"] * 3,
        partitions=np.array([2, 2, 2], np.int32),
        offsets=np.array([40, 41, 42], np.int64),
        timestamps=np.zeros(3, np.int64),
        keys=[b"A", b"B", b"C"],
        values=list(values),
        headers=[None, [("trace", b"t-1")], None],
    )
    decoded = TickDecoder().decode(batch.values)
    letters = dead_letters_for(batch, decoded.rejects, processor="features", dlq_topic="ticks.dlq", now_ms=123)
    assert [(d.key, d.value) for d in letters] == [(b"B", b"not json"), (b"C", b'{"symbol":"A"}')]
    first = header_dict(letters[0].headers)
    assert first["trace"] == "t-1"  # the producer's own header survives
    assert first["sq.error.class"] == "not_json"
    assert first["sq.source.topic"] == "ticks"
    assert (first["sq.source.partition"], first["sq.source.offset"]) == ("2", "41")
    assert (first["sq.processor"], first["sq.dead_letter.ts"]) == ("features", "123")
    assert header_dict(letters[1].headers)["sq.error.class"] == "missing_field"
    assert batch.next_offsets() == {("ticks", 2): 43}

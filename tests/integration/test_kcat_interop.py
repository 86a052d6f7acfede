"""Any client can write ticks: kcat produces a JSON tick and a broken message; ours decodes and dead-letters."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

from streams.config import KafkaConfig
from streams.dlq import header_dict
from tests.integration.test_dead_letters_kafka import read_all, run_ingest_once

TICK = '{"symbol": "MSFT", "ts": 1700000000123, "price": 374.51, "size": 25, "bid": 374.5, "ask": 374.52}'
BROKEN = '{"symbol": "MSFT", "ts": 1700000000124, "price": '


def test_kcat_tick_and_broken_message(kafka: KafkaConfig, make_topic: Any, unique: str) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat is not installed (apt-get install kcat); .ci/run installs it")
    topic = make_topic("ticks")
    dlq = make_topic("ticks.dlq")
    subprocess.run([kcat, "-b", kafka.bootstrap, "-t", topic, "-P", "-K", "|", "-l", "/dev/stdin"],
                   input=f"MSFT|{TICK}\nMSFT|{BROKEN}\n", text=True, check=True, timeout=30)

    ticks = run_ingest_once(kafka, topic, dlq, f"g-{unique}", want=2)
    assert len(ticks) == 1
    t = ticks[0]
    assert (t.symbol, t.ts, t.price, t.size, t.bid, t.ask) == ("MSFT", 1700000000123, 374.51, 25.0, 374.5, 374.52)

    (letter,) = read_all(kafka, dlq, 1, f"r-{unique}")
    assert letter.value() == BROKEN.encode() and letter.key() == b"MSFT"
    h = header_dict(letter.headers())
    assert h["sq.error.class"] == "not_json"
    assert h["sq.source.topic"] == topic and h["sq.source.offset"] == "1"
    assert h["sq.error.reason"].startswith("not valid JSON")

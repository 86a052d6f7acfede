"""Prometheus metrics of the Kafka layer (labels are bounded: topics and error classes, never reasons)."""

from __future__ import annotations

from prometheus_client import Counter

DEAD_LETTERS = Counter(
    "streamquant_dead_letters_total",
    "Messages routed to a dead-letter topic, by source topic and error class",
    ["topic", "reason"],
)
MESSAGES_CONSUMED = Counter(
    "streamquant_messages_consumed_total", "Messages consumed by a batch source", ["topic"]
)
MESSAGES_PRODUCED = Counter(
    "streamquant_messages_produced_total", "Messages written by a sink", ["topic"]
)

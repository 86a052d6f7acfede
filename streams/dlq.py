"""Dead letters: the original key and bytes of a message that could not be processed, and why."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.codec import Reject
from streams.source import Headers, MessageBatch

# Header names every dead letter carries (prefixed so they never collide with a producer's own).
H_ERROR_CLASS = "sq.error.class"
H_REASON = "sq.error.reason"
H_TOPIC = "sq.source.topic"
H_PARTITION = "sq.source.partition"
H_OFFSET = "sq.source.offset"
H_PROCESSOR = "sq.processor"
H_TIME = "sq.dead_letter.ts"
MAX_REASON_BYTES = 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message bound for `<topic>.dlq`: original key, value and headers plus the reason headers."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


def dead_letter(
    batch: MessageBatch,
    index: int,
    *,
    error_class: str,
    reason: str,
    processor: str,
    dlq_topic: str,
    now_ms: int | None = None,
) -> DeadLetter:
    """The dead letter of message `index` of `batch`; its own headers are kept ahead of ours."""
    when = int(time.time() * 1000) if now_ms is None else now_ms
    ours: Headers = [
        (H_ERROR_CLASS, error_class.encode()),
        (H_REASON, reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]),
        (H_TOPIC, batch.topics[index].encode()),
        (H_PARTITION, str(int(batch.partitions[index])).encode()),
        (H_OFFSET, str(int(batch.offsets[index])).encode()),
        (H_PROCESSOR, processor.encode()),
        (H_TIME, str(when).encode()),
    ]
    original = batch.headers[index] or []
    return DeadLetter(dlq_topic, batch.keys[index], batch.values[index], [*original, *ours])


def header_dict(headers: Headers | None) -> dict[str, str]:
    """Headers as a dict of text (the last value wins), for tests and `tail`."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (headers or [])}


def dead_letters_for(
    batch: MessageBatch,
    rejects: Iterable[Reject],
    *,
    processor: str,
    dlq_topic: str,
    now_ms: int | None = None,
) -> list[DeadLetter]:
    """The dead letters of a decoded batch's rejects (indices refer to `batch`)."""
    return [
        dead_letter(batch, r.index, error_class=r.error_class, reason=r.reason, processor=processor,
                    dlq_topic=dlq_topic, now_ms=now_ms)
        for r in rejects
    ]

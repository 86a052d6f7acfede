"""The job state machine, free of Kafka and Faust: what each command or worker event does to a job's record
and which messages it sends.

A job record is plain JSON (it lives in a changelog-backed Faust table). Commands come from the command
topics; events come from the scheduler through the plane's own event topic, so every change of a record
happens while processing a message, and with Faust's exactly-once mode the change, the messages it sends and
the consumed offset are committed together. Events of an earlier attempt, or for a job already in a terminal
state, change nothing: a job ends exactly once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out", "rejected"})
ACTIVE = frozenset({"queued", "running"})
# Fields that do not change what a job computes, so two commands differing only there share a result.
NOT_CONTENT = frozenset({"job_id", "priority", "timeout_s", "backend"})

Record = dict[str, Any]
Action = Literal["enqueue", "cancel"]


@dataclass
class Effects:
    """What handling one message asks the app to do: sends, scheduler actions and a cache write."""

    record: Record | None = None          # the job's new record (None: unchanged)
    statuses: list[Record] = field(default_factory=list)
    results: list[Record] = field(default_factory=list)
    actions: list[tuple[Action, str]] = field(default_factory=list)
    cache_put: tuple[str, Record] | None = None
    dead_letter: str | None = None        # reason, when the message itself is unusable


def cache_key(kind: str, command: Record) -> str:
    """Identical work, whatever its job id, priority, timeout or backend preference."""
    content = {k: v for k, v in command.items() if k not in NOT_CONTENT}
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{kind}:{digest}"


def status(record: Record, now_ms: int, **extra: Any) -> Record:
    """The JobStatus message of a record's current state."""
    out: Record = {"job_id": record["job_id"], "kind": record["kind"], "state": record["state"], "ts": now_ms,
                   "attempt": record["attempt"]}
    for name in ("backend", "progress", "reason"):
        value = extra.get(name, record.get(name))
        if value is not None:
            out[name] = value
    return out


def new_record(job_id: str, kind: str, command: Record, partition: int, now_ms: int) -> Record:
    return {"job_id": job_id, "kind": kind, "state": "queued", "attempt": 1, "command": command,
            "cache_key": cache_key(kind, command), "partition": partition, "queued_at": now_ms,
            "updated_at": now_ms, "backend": None, "progress": None, "reason": None, "result": None}


def _with(record: Record, now_ms: int, **changes: Any) -> Record:
    return {**record, **changes, "updated_at": now_ms}


def _result_for(record: Record, result: Record) -> Record:
    return {**result, "job_id": record["job_id"]}


def on_submit(existing: Record | None, job_id: str, kind: str, command: Record, partition: int, now_ms: int,
              cached: Record | None = None, cache_tier: str | None = None, leader: str | None = None) -> Effects:
    """A valid job command. A repeated job id never runs again: a finished job's result is sent again. Work
    already in the cache is answered at once; work identical to a job still running (`leader`) waits for that
    job's result instead of running twice."""
    if existing is not None:
        if existing["state"] in TERMINAL:
            fx = Effects(statuses=[status(existing, now_ms, reason=_repeat_reason(existing))])
            if existing.get("result") is not None:
                fx.results.append(existing["result"])
            return fx
        return Effects()  # queued or running already: the running job answers
    record = new_record(job_id, kind, command, partition, now_ms)
    if cached is not None:
        done = _with(record, now_ms, state="succeeded", backend="cache", progress=1.0,
                     reason=f"answered from the {cache_tier} result cache", result=_result_for(record, cached))
        return Effects(record=done, statuses=[status(record, now_ms), status(done, now_ms)], results=[done["result"]])
    if leader is not None:
        waiting = {**record, "follows": leader, "reason": f"the same work as job {leader}: waiting for its result"}
        return Effects(record=waiting, statuses=[status(waiting, now_ms)])
    return Effects(record=record, statuses=[status(record, now_ms)], actions=[("enqueue", job_id)])


def _repeat_reason(record: Record) -> str:
    previous = record.get("reason")
    return f"job id already used{': ' + previous if previous else ''}"


def on_reject(existing: Record | None, job_id: str, kind: str, command: Record, partition: int, now_ms: int,
              reason: str) -> Effects:
    """An invalid command with a usable job id: `rejected` with the reason (once)."""
    if existing is not None:
        return Effects(statuses=[status(existing, now_ms, reason=_repeat_reason(existing))])
    record = _with(new_record(job_id, kind, command, partition, now_ms), now_ms, state="rejected", reason=reason)
    return Effects(record=record, statuses=[status(record, now_ms)])


def on_cancel(existing: Record | None, job_id: str, now_ms: int, reason: str | None) -> Effects:
    if existing is None:
        return Effects(dead_letter=f"cancel for unknown job {job_id!r}")
    if existing["state"] in TERMINAL:
        return Effects()
    record = _with(existing, now_ms, state="cancelled", reason=reason or "cancelled by request")
    return Effects(record=record, statuses=[status(record, now_ms)], actions=[("cancel", job_id)])


def on_event(existing: Record | None, event: Record, now_ms: int) -> Effects:
    """A scheduler event: started, progress, succeeded, failed, rejected or timed_out of one attempt."""
    if existing is None or existing["state"] in TERMINAL:
        return Effects()
    kind = event["event"]
    attempt = int(event.get("attempt", 0))
    if kind == "shared":  # the job this one follows has ended
        if existing.get("follows") is None:
            return Effects()
        if event.get("result") is None:  # it did not succeed: run this one on its own
            record = _with(existing, now_ms, follows=None, reason=None)
            return Effects(record=record, actions=[("enqueue", existing["job_id"])])
        result = _result_for(existing, event["result"])
        record = _with(existing, now_ms, state="succeeded", backend="cache", progress=1.0, result=result,
                       follows=None, reason=f"shared the result of job {event['leader']}, which did the same work")
        return Effects(record=record, statuses=[status(record, now_ms)], results=[result])
    if kind == "started":
        if attempt < existing["attempt"]:
            return Effects()
        record = _with(existing, now_ms, state="running", attempt=attempt, backend=event.get("backend"),
                       reason=event.get("reason"), progress=0.0)
        return Effects(record=record, statuses=[status(record, now_ms)])
    if attempt != existing["attempt"]:
        return Effects()  # a late event of an attempt that a restart replaced
    if kind == "progress":
        record = _with(existing, now_ms, progress=float(event["progress"]))
        return Effects(record=record, statuses=[status(record, now_ms)])
    if kind == "succeeded":
        result = _result_for(existing, event["result"])
        record = _with(existing, now_ms, state="succeeded", progress=1.0, result=result,
                       backend=event.get("backend", existing.get("backend")), reason=event.get("reason"))
        return Effects(record=record, statuses=[status(record, now_ms)], results=[result],
                       cache_put=(existing["cache_key"], event["result"]))
    if kind in ("failed", "rejected", "timed_out"):
        record = _with(existing, now_ms, state=kind, reason=str(event.get("reason") or kind))
        return Effects(record=record, statuses=[status(record, now_ms)], actions=[("cancel", existing["job_id"])])
    raise ValueError(f"unknown job event {kind!r}")


def needs_running(record: Record) -> bool:
    """After a restart: a job that was queued or running is run again."""
    return record["state"] in ACTIVE


def next_attempt(record: Record) -> int:
    return int(record["attempt"]) + (1 if record["state"] == "running" else 0)

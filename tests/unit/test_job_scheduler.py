"""Scheduling decisions (priority, concurrency, GPU slots and fallback, timeout, cancel) with a fake worker
pool: logic only. Real worker processes run in tests/integration/test_jobs_plane.py."""

from __future__ import annotations

from typing import Any

from processors.jobs.kinds import JobContext
from processors.jobs.scheduler import Job, Scheduler


class FakeWorker:
    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.killed = False

    def start_job(self, kind: str, command: dict[str, Any], backend: str, context: JobContext) -> None:
        self.log.append(("start", command["id"], backend))

    def read(self) -> tuple[Any, ...]:
        raise AssertionError("not used without an event loop")

    def kill(self) -> None:
        self.killed = True

    def fileno(self) -> int:
        return -1


class FakePool:
    def __init__(self) -> None:
        self.log: list[Any] = []
        self.workers: list[FakeWorker] = []

    def acquire(self) -> FakeWorker:
        w = FakeWorker(self.log)
        self.workers.append(w)
        return w

    def release(self, worker: Any) -> None:
        pass

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def job(i: str, priority: int = 5, backend: str = "auto", timeout: float = 100.0) -> Job:
    return Job(i, "backtest", {"id": i}, 1, priority, timeout, backend)


def make(**kw: Any) -> tuple[Scheduler, FakePool, list[Any], Clock]:
    pool, events, clock = FakePool(), [], Clock()
    sched = Scheduler(pool, lambda j, e: events.append((j.job_id, e)), context=JobContext("/tmp"), clock=clock, **kw)
    return sched, pool, events, clock


def test_priority_order_and_concurrency_limit() -> None:
    sched, pool, events, _ = make(max_concurrent=2)
    for i, prio in (("a", 1), ("b", 5), ("c", 9), ("d", 5)):
        sched.submit(job(i, prio))
    # a and b start at once (the queue was empty when they came); then c (9) before d (5).
    assert [e[1] for e in pool.log] == ["a", "b"]
    sched.handle_reply("a", ("succeeded", {"r": 1}, "cpu", None))
    sched.handle_reply("b", ("failed", "ValueError: x"))
    assert [e[1] for e in pool.log] == ["a", "b", "c", "d"]
    ends = [(j, e["event"]) for j, e in events if e["event"] != "started"]
    assert ends == [("a", "succeeded"), ("b", "failed")]


def test_gpu_slot_then_cpu_fallback_after_waiting() -> None:
    sched, pool, events, clock = make(max_concurrent=4, gpu_slots=1, gpu_wait_s=10, gpu_visible=True)
    sched.submit(job("g1"))
    sched.submit(job("g2"))
    sched.submit(job("c1", backend="cpu"))
    assert pool.log == [("start", "g1", "gpu"), ("start", "c1", "cpu")]  # g2 waits; c1 is not stalled behind it
    clock.t = 11
    sched.check_timeouts()
    assert pool.log[-1] == ("start", "g2", "cpu")
    started = dict((j, e) for j, e in events if e["event"] == "started")
    assert "no GPU slot" in started["g2"]["reason"]


def test_gpu_preferred_without_a_gpu_runs_on_cpu_and_says_so() -> None:
    sched, pool, events, _ = make(gpu_visible=False)
    sched.submit(job("g", backend="gpu"))
    sched.submit(job("a", backend="auto"))
    assert pool.log == [("start", "g", "cpu"), ("start", "a", "cpu")]
    started = dict((j, e) for j, e in events if e["event"] == "started")
    assert "no GPU visible" in started["g"]["reason"] and "reason" not in started["a"]


def test_timeout_kills_the_worker_and_reports() -> None:
    sched, pool, events, clock = make()
    sched.submit(job("slow", timeout=5))
    clock.t = 6
    sched.check_timeouts()
    assert pool.workers[0].killed
    assert events[-1][1]["event"] == "timed_out" and "timeout of 5s" in events[-1][1]["reason"]
    assert not sched.known("slow")


def test_cancel_queued_and_running_emits_nothing() -> None:
    sched, pool, events, _ = make(max_concurrent=1)
    sched.submit(job("r"))
    sched.submit(job("q"))
    assert sched.cancel("q") and sched.cancel("r")
    assert pool.workers[0].killed
    assert [e["event"] for _, e in events] == ["started"]
    assert not sched.cancel("unknown")
    sched.submit(job("next"))
    assert pool.log[-1] == ("start", "next", "cpu")


def test_a_job_is_never_queued_twice() -> None:
    sched, pool, _, _ = make(max_concurrent=1)
    sched.submit(job("x"))
    sched.submit(job("x"))
    sched.handle_reply("x", ("succeeded", {}, "cpu", None))
    assert [e[1] for e in pool.log] == ["x"]

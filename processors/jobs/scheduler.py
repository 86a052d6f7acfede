"""The scheduler: a priority queue of jobs, a limit on how many run at once, GPU slots, timeouts and cancel.

It runs on the plane's event loop and only decides; the work happens in worker processes. What happens to a
job is reported through `emit` as events (started, progress, succeeded, failed, rejected, timed_out), which
the plane turns into status transitions. Cancelling is silent: the plane has already recorded it.

GPU policy: a job that prefers the GPU (backend `gpu`, or `auto` where a GPU is visible) takes a free GPU slot;
if none frees up within `gpu_wait_s` it runs on the CPU, and its `started` event says why. Jobs behind a waiting
GPU job still start on the CPU: one busy GPU never stalls the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from processors.jobs.kinds import JobContext

log = logging.getLogger(__name__)

JOBS_STARTED = Counter("streamquant_jobs_started_total", "Jobs started", ["kind", "backend"])
JOBS_ENDED = Counter("streamquant_jobs_ended_total", "Jobs ended by their worker", ["kind", "state"])
JOBS_RUNNING = Gauge("streamquant_jobs_running", "Jobs running now", ["backend"])
JOBS_QUEUED = Gauge("streamquant_jobs_queued", "Jobs waiting for a slot")
QUEUE_WAIT = Histogram("streamquant_job_queue_wait_seconds", "From queued to started",
                       buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800))
GPU_FALLBACKS = Counter("streamquant_job_gpu_fallbacks_total", "Jobs that preferred the GPU but ran on the CPU",
                        ["why"])


@dataclass
class Job:
    job_id: str
    kind: str
    command: dict[str, Any]
    attempt: int
    priority: int = 5
    timeout_s: float = 600.0
    backend: str = "auto"
    queued_at: float = field(default_factory=time.monotonic)


class WorkerLike(Protocol):
    def start_job(self, kind: str, command: dict[str, Any], backend: str, context: JobContext) -> None: ...

    def read(self) -> tuple[Any, ...]: ...

    def kill(self) -> None: ...

    def fileno(self) -> int: ...


class PoolLike(Protocol):
    def acquire(self) -> Any: ...

    def release(self, worker: Any) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Running:
    job: Job
    worker: WorkerLike
    backend: str
    deadline: float


Emit = Callable[[Job, dict[str, Any]], None]


class Scheduler:
    def __init__(self, pool: PoolLike, emit: Emit, *, context: JobContext, max_concurrent: int = 16,
                 gpu_slots: int = 1, gpu_wait_s: float = 30.0, gpu_visible: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.emit = emit
        self.context = context
        self.max_concurrent = max_concurrent
        self.gpu_slots = gpu_slots if gpu_visible else 0
        self.gpu_wait_s = gpu_wait_s
        self.gpu_visible = gpu_visible
        self.clock = clock
        self._queue: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._queued: dict[str, Job] = {}
        self._running: dict[str, _Running] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ public

    def known(self, job_id: str) -> bool:
        return job_id in self._queued or job_id in self._running

    def counts(self) -> dict[str, int]:
        return {"queued": len(self._queued), "running": len(self._running)}

    def submit(self, job: Job) -> None:
        if self.known(job.job_id):
            return
        job.queued_at = self.clock()
        self._queued[job.job_id] = job
        heapq.heappush(self._queue, (-job.priority, next(self._seq), job))
        JOBS_QUEUED.set(len(self._queued))
        self.dispatch()

    def cancel(self, job_id: str) -> bool:
        """Drops a queued job or kills a running one; no event is emitted."""
        if self._queued.pop(job_id, None) is not None:
            JOBS_QUEUED.set(len(self._queued))
            return True
        running = self._running.pop(job_id, None)
        if running is None:
            return False
        self._stop(running)
        self.dispatch()
        return True

    def cancel_where(self, predicate: Callable[[Job], bool]) -> list[str]:
        ids = [j.job_id for j in [*self._queued.values(), *(r.job for r in self._running.values())] if predicate(j)]
        for job_id in ids:
            self.cancel(job_id)
        return ids

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for job_id in list(self._running):
            self.cancel(job_id)
        self.pool.close()

    # ------------------------------------------------------------------ deciding

    def _prefers_gpu(self, job: Job) -> bool:
        return job.backend == "gpu" or (job.backend == "auto" and self.gpu_visible)

    def _gpu_in_use(self) -> int:
        return sum(1 for r in self._running.values() if r.backend == "gpu")

    def dispatch(self) -> None:
        """Starts what may start now, highest priority first (FIFO within a priority)."""
        skipped: list[tuple[int, int, Job]] = []
        now = self.clock()
        while self._queue and len(self._running) < self.max_concurrent:
            entry = heapq.heappop(self._queue)
            job = entry[2]
            if self._queued.get(job.job_id) is not job:
                continue  # cancelled while queued
            backend, note = "cpu", None
            if self._prefers_gpu(job):
                if self.gpu_slots == 0:
                    note = "no GPU visible: ran on the CPU"
                    GPU_FALLBACKS.labels("no_gpu").inc()
                elif self._gpu_in_use() < self.gpu_slots:
                    backend = "gpu"
                elif now - job.queued_at >= self.gpu_wait_s:
                    note = f"no GPU slot within {self.gpu_wait_s:.0f}s: ran on the CPU"
                    GPU_FALLBACKS.labels("busy").inc()
                else:
                    skipped.append(entry)
                    continue
            if job.backend == "auto" and not self.gpu_visible:
                note = None  # auto on a CPU-only host is simply the CPU
            self._start(job, backend, note)
        for entry in skipped:
            heapq.heappush(self._queue, entry)
        JOBS_QUEUED.set(len(self._queued))

    def _start(self, job: Job, backend: str, note: str | None) -> None:
        del self._queued[job.job_id]
        if self._loop is None:
            # A job can start before start() ran (the reconciler after a restart): replies are read on the
            # loop that runs us, so take it now — without it the job's result would never be read.
            with contextlib.suppress(RuntimeError):  # no loop: unit tests feed replies by hand
                self._loop = asyncio.get_running_loop()
        worker = self.pool.acquire()
        worker.start_job(job.kind, job.command, backend, self.context)
        self._running[job.job_id] = _Running(job, worker, backend, self.clock() + job.timeout_s)
        if self._loop is not None:
            self._loop.add_reader(worker.fileno(), self._on_reply, job.job_id, worker)
        QUEUE_WAIT.observe(max(self.clock() - job.queued_at, 0.0))
        JOBS_STARTED.labels(job.kind, backend).inc()
        JOBS_RUNNING.labels(backend).inc()
        event: dict[str, Any] = {"event": "started", "backend": backend}
        if note:
            event["reason"] = note
        self.emit(job, event)

    def _stop(self, running: _Running, reuse: bool = False) -> None:
        if self._loop is not None:
            self._loop.remove_reader(running.worker.fileno())
        JOBS_RUNNING.labels(running.backend).dec()
        if reuse:
            self.pool.release(running.worker)
        else:
            running.worker.kill()

    # ------------------------------------------------------------------ replies and time

    def _on_reply(self, job_id: str, worker: WorkerLike) -> None:
        running = self._running.get(job_id)
        if running is None or running.worker is not worker:
            return
        reply = worker.read()
        self.handle_reply(job_id, reply)

    def handle_reply(self, job_id: str, reply: tuple[Any, ...]) -> None:
        running = self._running.get(job_id)
        if running is None:
            return
        what = reply[0]
        if what == "progress":
            self.emit(running.job, {"event": "progress", "progress": min(max(float(reply[1]), 0.0), 1.0)})
            return
        del self._running[job_id]
        died = what == "failed" and str(reply[1]).startswith("worker process died")
        self._stop(running, reuse=not died)
        JOBS_ENDED.labels(running.job.kind, what).inc()
        if what == "succeeded":
            _, result, used, note = reply
            event: dict[str, Any] = {"event": "succeeded", "result": result, "backend": used}
            if note:
                event["reason"] = note
                GPU_FALLBACKS.labels("gpu_error").inc()
            self.emit(running.job, event)
        else:
            self.emit(running.job, {"event": what, "reason": str(reply[1])})
        self.dispatch()

    def check_timeouts(self) -> None:
        now = self.clock()
        for job_id, running in list(self._running.items()):
            if now >= running.deadline:
                del self._running[job_id]
                self._stop(running)
                JOBS_ENDED.labels(running.job.kind, "timed_out").inc()
                self.emit(running.job, {"event": "timed_out",
                                        "reason": f"ran longer than its timeout of {running.job.timeout_s:g}s"})
        self.dispatch()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            try:
                self.check_timeouts()
            except Exception:  # a scheduler bug must not stop the ticking; it is logged loudly
                log.exception("scheduler tick failed")

"""Worker processes: jobs compute here, never on the control plane's event loop.

Each worker is a spawned process that runs one job at a time and talks to the plane over a pipe. A job that
is cancelled or times out is stopped by killing its process (NumPy and CuPy code cannot be interrupted
politely), and the pool starts a fresh one when it is needed. A worker whose parent dies exits too, so a
killed control plane leaves no job running behind it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from processors.jobs.kinds import JobContext, JobRejected, run_job

# Messages from a worker: ("progress", p), ("succeeded", result, backend, note), ("rejected", reason),
# ("failed", reason).
Reply = tuple[Any, ...]


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(3)


def _worker_main(conn: Connection, parent: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    while True:
        try:
            kind, command, backend, context = conn.recv()
        except EOFError:
            return
        try:
            result, used, note = run_job(kind, command, backend, context, _Progress(conn))
            conn.send(("succeeded", result, used, note))
        except JobRejected as err:
            conn.send(("rejected", str(err)))
        except Exception as err:
            conn.send(("failed", f"{type(err).__name__}: {err}"))


class _Progress:
    """Sends a job's progress to the plane, at most twice a second."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.last = 0.0

    def __call__(self, p: float) -> None:
        now = time.monotonic()
        if now - self.last >= 0.5:
            self.last = now
            self.conn.send(("progress", float(p)))


class Worker:
    """One worker process and its end of the pipe."""

    def __init__(self, mp: Any) -> None:
        self.conn, child = mp.Pipe()
        self.process = mp.Process(target=_worker_main, args=(child, os.getpid()), daemon=True,
                                       name="streamquant-job-worker")
        self.process.start()
        child.close()

    def start_job(self, kind: str, command: dict[str, Any], backend: str, context: JobContext) -> None:
        self.conn.send((kind, command, backend, context))

    def read(self) -> Reply:
        """The next reply; ("failed", why) when the process died instead."""
        try:
            reply: Reply = self.conn.recv()
            return reply
        except (EOFError, OSError):
            self.process.join(timeout=1)
            return ("failed", f"worker process died (exit code {self.process.exitcode})")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def fileno(self) -> int:
        return self.conn.fileno()


class WorkerPool:
    """Idle workers are reused; a killed or dead one is replaced on demand."""

    def __init__(self, start_method: str = "spawn", factory: Callable[[Any], Worker] = Worker) -> None:
        self._context = multiprocessing.get_context(start_method)
        self._factory = factory
        self._idle: list[Worker] = []

    def acquire(self) -> Worker:
        while self._idle:
            worker = self._idle.pop()
            if worker.process.is_alive():
                return worker
            worker.kill()
        return self._factory(self._context)

    def release(self, worker: Worker) -> None:
        self._idle.append(worker)

    def close(self) -> None:
        for worker in self._idle:
            worker.kill()
        self._idle.clear()

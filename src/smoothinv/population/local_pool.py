"""The local backend: each task in a fresh worker process on this machine, a few at a time.

One process per model, not a reused pool: a model that hangs in native code, leaks memory or
crashes its process takes only itself down, and a task over its time limit is ended with
SIGKILL. Workers start from a fork server that has already imported torch (where the system
has one), so a task starts in a fraction of a second. A worker whose driver is gone (`kill -9`
of the driver) notices within a second and exits, so an orphan never competes with the rerun.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

import torch

from ..errors import param
from .backends import Done, Parallelism, usable_cores
from .task import Outcome, Task, run_task

POLL_S = 0.5
"""How often the driver checks time limits, and a worker checks that its driver is alive."""
JOIN_S = 10.0
"""How long a worker that has reported may take to exit before it is killed."""


def _context() -> Any:
    """A fork server that has imported torch and smoothinv where the system has one, else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["smoothinv.population.task"])
        return context
    return multiprocessing.get_context("spawn")


def _work(task: Task, conn: Connection) -> None:
    """A worker's life: watch the parent, run the task, send the outcome back. Ctrl-C reaches the
    whole process group; the driver decides what happens to its workers, so they ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(POLL_S)
            if os.getppid() != parent:  # the driver (or the fork server it owned) is gone
                os._exit(3)

    threading.Thread(target=watch, name="smoothinv-parent-watch", daemon=True).start()
    outcome = run_task(task)
    try:
        conn.send(outcome)
    except OSError:
        pass
    finally:
        conn.close()


@dataclass
class _Running:
    task: Task
    process: Any
    conn: Connection
    started: float = field(default_factory=time.monotonic)

    def stop(self) -> None:
        """End the worker at once (SIGKILL) and close its pipe."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(JOIN_S)
        self.conn.close()

    def outcome(self) -> Outcome:
        """The worker's report, or an error outcome if it died before sending one."""
        report = None
        try:
            if self.conn.poll():
                report = self.conn.recv()
        except (EOFError, OSError):
            report = None
        self.process.join(JOIN_S)
        seconds = time.monotonic() - self.started
        if isinstance(report, Outcome):
            self.stop()
            return report
        self.stop()
        code = self.process.exitcode
        how = f"signal {-code}" if isinstance(code, int) and code < 0 else f"exit status {code}"
        return Outcome.failed(self.task, f"the worker process scanning this model died ({how}) before it reported; "
                                         f"nothing was saved for it (rerun with {param('retry_failed')}=True to try again)",
                              seconds)


class LocalPool:
    """Worker processes on this machine, `parallelism.workers` at a time."""

    name = "local"
    enforces_timeout = True
    max_workers = None

    def __init__(self) -> None:
        self._context: Any = None

    def __enter__(self) -> LocalPool:
        self._context = _context()
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def cores(self) -> int:
        return usable_cores()

    def gpus(self) -> int:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def run(self, tasks: Sequence[Task], parallelism: Parallelism, timeout: float | None, done: Done) -> None:
        context = self._context or _context()
        pending = deque(tasks)
        running: list[_Running] = []
        try:
            while pending or running:
                while pending and len(running) < parallelism.workers:
                    running.append(self._start(context, pending.popleft()))
                ready = set(wait([r.conn for r in running] + [r.process.sentinel for r in running], timeout=POLL_S))
                for job in [r for r in running if r.conn in ready or r.process.sentinel in ready]:
                    running.remove(job)
                    done(job.outcome())
                for job in [r for r in running if timeout is not None and time.monotonic() - r.started > timeout]:
                    running.remove(job)
                    job.stop()
                    done(Outcome.failed(job.task, f"did not finish within {timeout:g} s ({param('model_timeout')}); stopped",
                                        time.monotonic() - job.started))
        finally:
            for job in running:
                job.stop()

    @staticmethod
    def _start(context: Any, task: Task) -> _Running:
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_work, args=(task, send), name=f"smoothinv-{task.entry.name}", daemon=True)
        process.start()
        send.close()
        return _Running(task, process, receive)

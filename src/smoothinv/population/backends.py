"""Where a population's tasks run, behind one interface, and how many run at once.

A backend is a context manager (`with backend:` starts and stops what it needs) with
`cores()`, `gpus()` and `run(tasks, parallelism, timeout, done)`, which calls `done(outcome)`
in this process as each task finishes, in any order. A task that fails, hangs past `timeout`
or kills its worker becomes an error outcome; the other tasks go on.

- `inline`: one task after another in this process (no isolation and no hard time limit;
  for debugging and for the TrojAI single-model entry point);
- `local` (local_pool.py): a pool of worker processes on this machine;
- `ray` (ray_backend.py): Ray, on this machine or an existing cluster (an optional extra).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import TracebackType
from typing import Callable, Protocol, Sequence

import torch

from ..registry import Registry
from .task import Outcome, Task, run_task

Done = Callable[[Outcome], None]
Log = Callable[[str], None]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Parallelism:
    """`workers` tasks at once, `threads` torch threads each. Tasks × threads should match the
    cores: more threads than cores made two scans 2.4x slower on 2 cores (docs/benchmarks.md)."""

    workers: int
    threads: int

    @classmethod
    def choose(cls, cores: int, tasks: int, workers: int | None = None, threads: int | None = None,
               gpus: int = 0) -> Parallelism:
        """What was asked for, the rest filled in so that workers × threads = cores: by default as
        many one-thread workers as there are tasks, up to the cores (one per GPU where there are GPUs)."""
        if workers is None:
            if threads is not None:
                workers = max(1, cores // threads)
            else:
                workers = max(1, min(tasks, gpus if gpus else cores))
        workers = max(1, min(workers, max(tasks, 1)))
        if threads is None:
            threads = max(1, cores // workers)
        return cls(workers, threads)

    def oversubscribes(self, cores: int) -> bool:
        return self.workers * self.threads > cores

    def describe(self) -> str:
        return (f"{self.workers} worker{'s' if self.workers != 1 else ''} x {self.threads} "
                f"thread{'s' if self.threads != 1 else ''}")


class Backend(Protocol):
    name: str
    max_workers: int | None
    """The most tasks it runs at once (None: no limit of its own)."""

    def __enter__(self) -> Backend: ...

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None: ...

    def cores(self) -> int:
        """CPU cores the tasks can use (a Ray cluster's, for Ray)."""
        ...

    def gpus(self) -> int:
        """GPUs the tasks can use; each task then asks for one."""
        ...

    def run(self, tasks: Sequence[Task], parallelism: Parallelism, timeout: float | None, done: Done) -> None:
        """Run every task, `parallelism.workers` at a time; `done(outcome)` as each one ends."""
        ...


class InlineBackend:
    """Every task in this process, one after the other (so one worker, with every core's threads).
    A task cannot be stopped from outside, so `timeout` is not enforced here (the caller is told)."""

    name = "inline"
    enforces_timeout = False
    max_workers = 1

    def __enter__(self) -> InlineBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def cores(self) -> int:
        return usable_cores()

    def gpus(self) -> int:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def run(self, tasks: Sequence[Task], parallelism: Parallelism, timeout: float | None, done: Done) -> None:
        before = torch.get_num_threads()
        try:
            for task in tasks:
                done(run_task(task))
        finally:
            torch.set_num_threads(before)


def _local() -> Backend:
    from .local_pool import LocalPool

    return LocalPool()


def _ray() -> Backend:
    from .ray_backend import RayBackend

    return RayBackend()


BACKENDS: Registry[Callable[[], Backend]] = Registry("backend")
"""Backends by name: a factory each (Ray's takes an address; see ray_backend.RayBackend)."""
BACKENDS.add("inline", InlineBackend)
BACKENDS.add("local", _local)
BACKENDS.add("ray", _ray)


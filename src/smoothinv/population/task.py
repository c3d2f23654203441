"""One model's task, as a worker runs it: set the thread count, open the model, run the job,
and hand back an `Outcome`, never an exception.

A worker may be another process or another machine (Ray), so the job's files come back as
bytes in the outcome and only the driver writes the population's folder: a worker that dies
leaves nothing half-written there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SmoothInvError
from .entries import ModelEntry
from .jobs import Job
from .subject import Loading, open_model

MAX_RESULT_BYTES = 256 << 20
"""What one model's files may add up to (a scan's report and pictures take well under 1 MB)."""


@dataclass(frozen=True)
class Task:
    """A model, the job to run on it, how to open it, the torch threads it gets, and its key."""

    entry: ModelEntry
    job: Job
    loading: Loading
    threads: int
    sha256: str
    key: str


@dataclass
class Outcome:
    """What came of one task: the job's row and files, or an error in one line."""

    name: str
    key: str
    sha256: str | None
    seconds: float
    row: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None
    threads: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, task: Task, error: str, seconds: float = 0.0) -> Outcome:
        return cls(task.entry.name, task.key, task.sha256, round(seconds, 3), error=error, threads=task.threads)


def use_threads(threads: int) -> None:
    """Give torch (and OpenMP/MKL in any process this one starts) `threads` threads.

    Several tasks share the machine's cores: tasks × threads must not exceed them, or every
    task slows down many times over (docs/benchmarks.md, "Scanning a population")."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    torch.set_num_threads(threads)


def run_task(task: Task) -> Outcome:
    """Run `task` here; every failure of the model or its inputs becomes an error outcome."""
    use_threads(task.threads)
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="smoothinv-task-"))
    try:
        entry = task.entry
        model = open_model(entry.path, entry.hints, task.loading, task.sha256, entry.inputs.native_size())
        row = task.job.run(model, entry, task.loading, folder)
        files = collect_files(folder)
    except SmoothInvError as e:
        return Outcome.failed(task, _one_line(str(e)), time.perf_counter() - started)
    except MemoryError:
        return Outcome.failed(task, "out of memory; lower the clean-set limit, max batch or noise samples",
                              time.perf_counter() - started)
    except RecursionError:
        return Outcome.failed(task, "the model or an input is nested too deeply to process (recursion limit)",
                              time.perf_counter() - started)
    except Exception as e:  # a model failing in a way nobody foresaw: an error row, the others go on
        first = (str(e).strip().splitlines() or [""])[0]
        return Outcome.failed(task, _one_line(f"unexpected {type(e).__name__}: {first}"),
                              time.perf_counter() - started)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Outcome(entry.name, task.key, task.sha256, round(time.perf_counter() - started, 3), row, files,
                   threads=task.threads)


def collect_files(folder: Path) -> dict[str, bytes]:
    """{relative POSIX path: bytes} of the files under `folder` (links and empty folders left out)."""
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
            if total > MAX_RESULT_BYTES:
                raise SmoothInvError(f"the job's files pass {MAX_RESULT_BYTES >> 20} MB; scan fewer classes")
            files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return files


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "failed without a message"

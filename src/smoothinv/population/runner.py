"""Run a job on every model of a population: skip what is done, dispatch the rest, store each
result as it arrives.

A model is done when the store holds a row with the same key: the smoothinv version, the job's
settings, the model's loading options and inputs, and the SHA-256 of its file. A model whose
stored row is an error with the same key is kept as it is unless `retry_failed`; any change of
key (new settings, a replaced file) does it again. Results are stored one by one in the
driver, as the backend reports them, so stopping the driver at any moment (`kill -9`
included) loses only the models in flight.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .. import __version__
from ..errors import SmoothInvError, param
from ..files import sha256_file
from .backends import Backend, Parallelism
from .calibration import TrojanCalibration
from .entries import ModelEntry
from .jobs import Job
from .spec import ListedEntry
from .store import Store
from .subject import Loading
from .task import Outcome, Task

Log = Callable[[str], None]
ROW_FIELDS = ("model", "verdict", "targets", "score", "trojan_probability", "seconds", "error")
"""The columns of summary.csv, in order (summary.json rows hold more)."""


@dataclass
class PopulationRun:
    """How to run `job` over a population: where results go (`store`), where tasks run (`backend`,
    entered by the caller), how models are opened, how many tasks at once with how many threads
    (None: chosen from the cores; backends.Parallelism), the hard limit per model in seconds,
    whether earlier errors are retried, and the calibration that turns scores into probabilities.
    `on_stored(rows)` is called after each stored result with every row so far (a summary writer)."""

    job: Job
    store: Store
    backend: Backend
    loading: Loading = Loading()
    workers: int | None = None
    threads: int | None = None
    model_timeout: float | None = None
    retry_failed: bool = False
    calibration: TrojanCalibration | None = None
    log: Log = print
    on_stored: Callable[[list[dict[str, Any]]], None] | None = None
    render: Callable[[str], str] = str
    """How an error message is written into the rows (the CLI writes parameters as its flags)."""
    parallelism: Parallelism | None = field(default=None, init=False)


def model_key(entry: ModelEntry, job: Job, loading: Loading, sha256: str | None) -> str:
    """What a stored result must match to be reused (see the module docstring), as a SHA-256."""
    data = {"smoothinv": __version__, "job": job.describe(), "model": entry.describe(),
            "loading": loading.describe(), "sha256": sha256}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_population(listing: Sequence[ModelEntry | ListedEntry], run: PopulationRun) -> list[dict[str, Any]]:
    """Every model's row, in listing order, after running the job where needed (see the module docstring)."""
    items = [item if isinstance(item, ListedEntry) else ListedEntry(item) for item in listing]
    entries = {item.entry.name: item.entry for item in items}
    rows: dict[str, dict[str, Any]] = {}
    todo: list[Task] = []
    skipped = {"done": 0, "failed": 0}
    for item in items:
        entry = item.entry
        sha, problem = _hash(item)
        task = Task(entry, run.job, run.loading, 1, sha or "", model_key(entry, run.job, run.loading, sha))
        previous = run.store.previous(entry.name)
        if previous is not None and previous.get("key") == task.key and (
                previous.get("status") == "done" or not run.retry_failed):
            rows[entry.name] = previous
            skipped["done" if previous.get("status") == "done" else "failed"] += 1
        elif problem is not None:
            rows[entry.name] = _store(run, entry, Outcome.failed(task, problem))
        else:
            todo.append(task)
    _log_plan(run, len(items), len(todo), skipped)
    if todo:
        limit = getattr(run.backend, "max_workers", None)
        workers = run.workers if limit is None else min(run.workers or limit, limit)
        parallelism = run.parallelism = Parallelism.choose(run.backend.cores(), len(todo), workers, run.threads,
                                                           run.backend.gpus())
        cores = run.backend.cores()
        run.log(f"running {len(todo)} model(s) on {run.backend.name}: {parallelism.describe()} "
                f"({cores} core{'s' if cores != 1 else ''})")
        if parallelism.oversubscribes(cores):
            run.log(f"warning: {parallelism.workers} workers x {parallelism.threads} threads is more than the "
                    f"{cores} cores; every scan will be slower than with fewer threads")
        if run.model_timeout is not None and not getattr(run.backend, "enforces_timeout", False):
            run.log(f"warning: the {run.backend.name} backend cannot stop a model, so {param('model_timeout')} "
                    "is not enforced")
        tasks = [Task(t.entry, t.job, t.loading, parallelism.threads, t.sha256, t.key) for t in todo]
        finished = [0]

        def done(outcome: Outcome) -> None:
            finished[0] += 1
            row = rows[outcome.name] = _store(run, entries[outcome.name], outcome)
            run.log(f"[{finished[0]}/{len(tasks)}] {describe_row(row)}")
            if run.on_stored is not None:
                run.on_stored([rows[name] for name in entries if name in rows])

        run.backend.run(tasks, parallelism, run.model_timeout, done)
    return [rows[name] for name in entries]


def _hash(item: ListedEntry) -> tuple[str | None, str | None]:
    """(the model file's SHA-256, None) or (None or the hash, the problem in one line)."""
    path = item.entry.path
    if not path.exists():
        return None, f"model file {path} does not exist"
    if not path.is_file():
        return None, f"{path} is not a file"
    try:
        sha = sha256_file(path)
    except OSError as e:
        return None, f"cannot read model file {path} ({e.strerror or e})"
    if item.sha256 is not None and sha != item.sha256:
        return sha, f"{path} has sha256 {sha[:12]}..., its manifest says {item.sha256[:12]}...; the file was changed"
    return sha, None


def _log_plan(run: PopulationRun, total: int, todo: int, skipped: dict[str, int]) -> None:
    parts = [f"{total} model(s)"]
    if skipped["done"]:
        parts.append(f"{skipped['done']} done earlier with the same settings (skipped)")
    if skipped["failed"]:
        parts.append(f"{skipped['failed']} failed earlier (kept; {param('retry_failed')}=True tries them again)")
    parts.append(f"{todo} to run")
    run.log("; ".join(parts))


def _store(run: PopulationRun, entry: ModelEntry, outcome: Outcome) -> dict[str, Any]:
    if outcome.error is not None:
        outcome.error = run.render(outcome.error)
    row = result_row(entry, outcome, run.calibration if run.calibration and run.calibration.method == run.job.name
                     else None)
    try:
        run.store.install(entry.name, row, outcome.files)
    except SmoothInvError as e:
        raise SmoothInvError(f"cannot store the result of {entry.name}: {e}") from None
    return row


def result_row(entry: ModelEntry, outcome: Outcome, calibration: TrojanCalibration | None) -> dict[str, Any]:
    """A model's row: ROW_FIELDS first, then status, truth, file, key and the job's other fields."""
    job_row = dict(outcome.row)
    score = job_row.pop("score", None) if outcome.ok else None
    truth = entry.truth
    row: dict[str, Any] = {
        "model": entry.name,
        "verdict": job_row.pop("verdict", None) if outcome.ok else "error",
        "targets": job_row.pop("targets", []) if outcome.ok else [],
        "score": score,
        "trojan_probability": None if calibration is None else calibration.probability(score),
        "seconds": round(outcome.seconds, 1),
        "error": outcome.error,
        "status": "done" if outcome.ok else "error",
        "truth": None if truth is None else truth.describe(),
        "backdoored": None if truth is None else truth.backdoored,
        "true_target": None if truth is None else truth.target,
        "kind": entry.kind,
        "dataset": entry.dataset,
        "path": str(entry.path),
        "sha256": outcome.sha256 or None,
        "key": outcome.key,
        "threads": outcome.threads,
        "finished_unix": round(time.time(), 3),
    }
    row.update({k: v for k, v in job_row.items() if k not in row})
    return row


def describe_row(row: dict[str, Any]) -> str:
    """One line for the log: the verdict, score, probability and time, or the error."""
    if row["status"] != "done":
        return f"{row['model']}: error: {row['error']}"
    p = row.get("trojan_probability")
    truth = f" (truth: {row['truth']})" if row.get("truth") else ""
    return (f"{row['model']}: {row['verdict']} {row['targets']}{truth}, score {row['score']:.2f}"
            + ("" if p is None else f", trojan probability {p:.3f}") + f", {row['seconds']:.0f}s")

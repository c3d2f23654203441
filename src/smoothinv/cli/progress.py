"""A progress bar over optimisation steps, on stderr."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

COLUMNS = (
    TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(),
    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
)


class StepBar:
    """A ProgressHook (label, steps) over one bar; `restart` begins a new bar for a further pass."""

    def __init__(self, progress: Progress, total: int) -> None:
        self._progress = progress
        self._task: TaskID = progress.add_task("starting", total=total)

    def __call__(self, label: str, steps: int) -> None:
        self._progress.update(self._task, advance=steps, description=label)

    def restart(self, label: str, total: int) -> None:
        """Leave the current bar as it stands and count the next `total` steps on a new one."""
        self._task = self._progress.add_task(label, total=total)


@contextmanager
def step_progress(total: int, console: Console) -> Iterator[StepBar]:
    """Yield a StepBar of `total` steps, shown while the context is open."""
    with Progress(*COLUMNS, console=console, transient=False) as progress:
        yield StepBar(progress, total)

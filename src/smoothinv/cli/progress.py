"""A progress bar over optimisation steps, on stderr."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..engine.sweep import ProgressHook


@contextmanager
def step_progress(total: int, console: Console) -> Iterator[ProgressHook]:
    """Yield a hook (label, steps) that advances one bar of `total` steps."""
    columns = (
        TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("starting", total=total)

        def hook(label: str, steps: int) -> None:
            progress.update(task, advance=steps, description=label)

        yield hook

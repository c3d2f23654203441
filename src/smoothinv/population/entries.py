"""One model of a population: its file, how to read it, what to scan it with, and the truth when known.

Entries are plain frozen dataclasses: they travel to worker processes (pickled, or to Ray) and
their `describe()` is part of the key a rerun compares to skip a model already done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import SmoothInvError
from .inputs import DatasetInputs, FileInputs

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""A model's name is its result folder's name: one path component, not hidden, no separators."""


def check_name(name: object, where: str) -> str:
    """`name` if it can name a result folder, else a one-line error that says where it came from."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or name in (".", ".."):
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise SmoothInvError(f"{where}: model name {shown} must be 1-200 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
    return name


def safe_name(text: str) -> str:
    """A model name made from a file name: characters a folder name cannot safely hold become '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("._-")[:200]
    return cleaned or "model"


@dataclass(frozen=True)
class LoadingHints:
    """How to read a model file (models.load_model's hints); None = from the file or the architecture."""

    arch: str | None = None
    num_classes: int | None = None
    input_size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def over(self, defaults: LoadingHints) -> LoadingHints:
        """These hints, with `defaults` filling the ones not given."""
        return replace(defaults, **{f.name: getattr(self, f.name) for f in fields(self)
                                    if getattr(self, f.name) is not None})

    def describe(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self)
                for v in [getattr(self, f.name)]}


@dataclass(frozen=True)
class Truth:
    """What is known about a model (a zoo model, or a listed label): backdoored or not, and its target."""

    backdoored: bool
    target: int | None = None

    def describe(self) -> str:
        return f"target {self.target}" if self.backdoored else "clean"


@dataclass(frozen=True)
class ModelEntry:
    """A model file and what it is scanned with. `denoiser`: T in the smoothed classifier (a shipped
    name, a folder, or "auto" = the shipped one of `dataset`); `kind`: a label to group results by
    (the architecture, for the zoo); `truth`: known labels, for the summary's metrics."""

    name: str
    path: Path
    inputs: FileInputs | DatasetInputs
    hints: LoadingHints = LoadingHints()
    denoiser: str | None = None
    dataset: str | None = None
    kind: str | None = None
    truth: Truth | None = None

    def describe(self) -> dict[str, Any]:
        """What decides the result besides the job's settings and the file's bytes (part of the key)."""
        return {"path": str(self.path), "inputs": self.inputs.describe(), "hints": self.hints.describe(),
                "denoiser": self.denoiser}


def unique_names(entries: list[ModelEntry], where: str) -> list[ModelEntry]:
    """`entries` if no two share a name (two results cannot share a folder), else an error naming them."""
    seen: set[str] = set()
    twice = sorted({e.name for e in entries if e.name in seen or seen.add(e.name)})  # type: ignore[func-returns-value]
    if twice:
        raise SmoothInvError(f"{where}: model name(s) {', '.join(twice[:5])} appear more than once; "
                             "give each model its own name")
    return entries

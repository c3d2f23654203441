"""Where a population's per-model results live, and what a rerun finds there.

`FolderStore`: one folder per model (`<root>/<name>/`: the job's files and `row.json`), each
installed atomically (reporting.outputs.atomic_directory: written beside, then renamed into
place), so a `kill -9` at any moment leaves every model either done or not started. `row.json`
holds the model's key (settings, loading options, inputs and the file's SHA-256): a rerun skips
a model whose stored key matches. `MemoryStore` keeps rows in memory (a run that need not resume).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from ..errors import SmoothInvError
from ..reporting.outputs import MARKER, atomic_directory, read_marker, write_json

ROW_FILE = "row.json"
MODEL_KIND = "scan-many-model"
_MAX_ROW_BYTES = 64 << 20


class Store(Protocol):
    def previous(self, name: str) -> dict[str, Any] | None:
        """The stored row of model `name`, or None."""
        ...

    def install(self, name: str, row: dict[str, Any], files: dict[str, bytes]) -> None:
        """Store model `name`'s row and files, replacing what was there."""
        ...


class MemoryStore:
    """Rows in memory; files are dropped."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def previous(self, name: str) -> dict[str, Any] | None:
        return self.rows.get(name)

    def install(self, name: str, row: dict[str, Any], files: dict[str, bytes]) -> None:
        self.rows[name] = row


class FolderStore:
    """`<root>/<name>/` per model."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, name: str) -> Path:
        return self.root / name

    def previous(self, name: str) -> dict[str, Any] | None:
        folder = self.folder(name)
        marker = read_marker(folder)
        path = folder / ROW_FILE
        if marker is None or marker.get("kind") != MODEL_KIND or path.is_symlink() or not path.is_file():
            return None
        try:
            if path.stat().st_size > _MAX_ROW_BYTES:
                return None
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # damaged: the model is done again
        return row if isinstance(row, dict) and row.get("model") == name else None

    def install(self, name: str, row: dict[str, Any], files: dict[str, bytes]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_directory(self.folder(name), overwrite=True, kind=MODEL_KIND) as tmp:
            for relative, data in files.items():
                path = tmp / _inside(relative)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            write_json(tmp / ROW_FILE, row)


def _inside(relative: str) -> Path:
    """A worker's file name as a path inside the model's folder (nothing absolute, no '..', not ours)."""
    path = PurePosixPath(relative)
    if path.is_absolute() or not path.parts or ".." in path.parts or path.parts[0] in (MARKER, ROW_FILE):
        raise SmoothInvError(f"a worker returned a file named {relative!r}, which cannot be stored")
    return Path(*path.parts)

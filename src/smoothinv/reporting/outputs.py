"""Writing results so a failure never leaves half an output behind.

Everything goes into a hidden temporary directory next to the destination, which is
renamed into place only when complete. An existing non-empty destination is kept unless
the caller asks to replace it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import SmoothInvError


def check_destination(path: str | Path, overwrite: bool) -> Path:
    """Fail early (before any work) if `path` would be clobbered without --overwrite."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SmoothInvError(f"output path {path} is a file; choose a directory for --out")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise SmoothInvError(f"output directory {path} already exists and is not empty; choose another --out or pass --overwrite")
    return path


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` when the block succeeds."""
    path = check_destination(path, overwrite).absolute()
    created = [p for p in reversed(path.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created):
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    os.chmod(tmp, 0o755)
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / "previous")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file next to `path` and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any) -> None:
    """Pretty JSON, written atomically."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")

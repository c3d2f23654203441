"""Writing files so readers never see half of one, and hashing them: the one place for both.

Every file smoothinv writes (reports, models, PNGs, checkpoints, caches, zoo copies) is
written to a temporary file in the destination's own folder, flushed to disk, and renamed
over the destination with ``os.replace``. A reader, or a process killed mid-write, therefore
sees the old file or the new one, never a mix; on any failure (an OSError, an exception from
the writer, Ctrl-C) the temporary file is removed and the destination is left as it was.

Bottom layer: imports only the standard library. Errors are the OSErrors of the file
system; callers turn them into the one-line messages that fit their command.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

DEFAULT_PERMISSIONS = 0o644
"""What a finished file may be read by: everyone, like a file made by ``open``. ``mkstemp``
makes files private (0o600); pass ``permissions=None`` to keep them so."""
_BLOCK = 1 << 20


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, prefix: str | None = None, suffix: str = ".tmp",
                permissions: int | None = DEFAULT_PERMISSIONS) -> Iterator[Path]:
    """Yield the path of a fresh, empty temporary file next to `path`; when the block
    succeeds, flush it to disk and rename it over `path`. For writers that take a file name
    (``safetensors.torch.save_file``); see `atomic_write` for those that take a file object.

    The temporary name is ``<prefix><random><suffix>`` (prefix default ``.<name>.``), hidden
    and in the same folder, so the rename never crosses file systems. On any failure,
    KeyboardInterrupt included, the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}." if prefix is None else prefix, suffix=suffix,
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _sync_file(tmp)
        if permissions is not None:
            os.chmod(tmp, permissions)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", *, prefix: str | None = None,
                 suffix: str = ".tmp", permissions: int | None = DEFAULT_PERMISSIONS,
                 **open_options: Any) -> Iterator[IO[Any]]:
    """Yield a file object, opened with `mode` ("wb", or "w" with `open_options` such as
    ``encoding``/``newline``) on a temporary file next to `path`; when the block succeeds the
    file is closed, flushed to disk and renamed over `path` (see `atomic_path`)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write writes new files; mode must start with 'w', got {mode!r}")
    with atomic_path(path, prefix=prefix, suffix=suffix, permissions=permissions) as tmp:
        with open(tmp, mode, **open_options) as handle:
            yield handle


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8",
                      **options: Any) -> None:
    """Write `text` to `path` atomically, encoded as `encoding`, line endings kept exactly as given."""
    with atomic_write(path, "w", encoding=encoding, newline="", **options) as handle:
        handle.write(text)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the file at `path` as 64 lower-case hex digits, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _sync_file(path: Path) -> None:
    """Flush `path`'s content to disk, so the rename never installs a file the disk lacks."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(folder: Path) -> None:
    """Flush `folder`'s entries (the rename) to disk where the system allows it; best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

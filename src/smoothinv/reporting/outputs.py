"""Writing results so a failure never leaves half an output behind, and nothing the user
owns is ever deleted.

Everything goes into a hidden temporary directory next to the destination
(``.NAME.partial-*``), renamed into place only when complete. Every directory the tool
creates carries a marker file, ``.smoothinv-output``: a small JSON with the tool, its
version, the kind of command, the creating process and host, and (once complete) the list
of files written. The marker is what makes the destructive steps safe:

- ``overwrite`` replaces an existing non-empty directory only if it has our marker and
  holds nothing beyond the files that marker lists;
- the current directory and its parents, the home directory, ``/`` and any directory that
  holds one of the command's input files are never an output;
- the leftovers of a killed run (``.NAME.partial-*``, ``.NAME.old-*``) are removed by the
  next run into the same destination, but only when they carry our marker and their process
  is gone (or they are older than ``STALE_AFTER_S``).

``check_destination`` runs before any work, so a destination that cannot be written fails
in a second, not after an hour of computing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .. import __version__
from ..errors import SmoothInvError, param
from ..files import atomic_write_text

# The file that marks a directory as written by smoothinv.
MARKER = ".smoothinv-output"
# A leftover whose process cannot be checked (another host, PID reused) is stale after this.
STALE_AFTER_S = 6 * 3600
# A marker larger than this is not one of ours.
_MARKER_MAX_BYTES = 1 << 20
# How messages name the destination and the permission to replace it (the caller's parameters).
OUT, OVERWRITE = param("out"), param("overwrite")

InputPaths = Sequence["str | os.PathLike[str] | None"]


def check_destination(path: str | Path, overwrite: bool, inputs: InputPaths = ()) -> Path:
    """Fail early (before any work) unless `path` can safely become a new output directory.

    Refused: a protected place (the current directory or a parent of it, the home
    directory, ``/``), a directory holding one of `inputs` or lying inside an input folder,
    an existing file, a non-empty
    directory without `overwrite`, a non-empty directory smoothinv did not write (even with
    `overwrite`), and a place where nothing can be created (under a file, read-only).
    """
    path = Path(path)
    _refuse_protected_places(path)
    if path.exists() and not path.is_dir():
        raise SmoothInvError(f"output path {path} is a file; choose a directory for {OUT}")
    _refuse_input_holders(path, inputs)
    if path.is_dir() and _has_entries(path):
        if not overwrite:
            raise SmoothInvError(
                f"output directory {path} already exists and is not empty; choose another {OUT} "
                f"or pass {OVERWRITE}=True"
            )
        _require_own_output(path)
    _require_creatable(path)
    return path


def check_file_destination(path: str | Path) -> Path:
    """Fail early (before any work) unless `path` can be written as a single output file:
    it is not a directory, and its folder exists and accepts new files."""
    path = Path(path)
    if path.is_dir():
        raise SmoothInvError(f"output path {path} is a directory; give a file name for {OUT}")
    parent = Path(os.path.abspath(path)).parent
    if not parent.is_dir():
        raise SmoothInvError(f"cannot write {OUT} {path}: folder {parent} does not exist; create it first")
    _require_creatable(path)
    return path


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False, inputs: InputPaths = (),
                     kind: str = "output") -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` when the block succeeds.

    `inputs` are the command's input files (never inside the output); `kind` names the
    command in the marker. Stale leftovers of killed runs into `path` are removed first.
    """
    path = Path(os.path.abspath(check_destination(path, overwrite, inputs)))
    created = _make_parents(path)
    remove_stale_leftovers(path)
    tmp = _new_work_dir(path, "partial", kind)
    try:
        yield tmp
        check_destination(path, overwrite, inputs)  # it may have changed while we computed
        _install(tmp, path, kind)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        if isinstance(exc, OSError):
            raise SmoothInvError(
                f"cannot write output {path} ({_one_line(exc)}); check free space and permissions"
            ) from None
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file next to `path` and rename it into place."""
    path = Path(path)
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise SmoothInvError(f"cannot write {path} ({_one_line(exc)}); check that its folder exists and is writable") from None


def write_json(path: str | Path, data: Any) -> None:
    """Pretty JSON, written atomically."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_marker(directory: str | Path) -> dict[str, Any] | None:
    """The directory's smoothinv marker, or None if it has no valid one (a symlink is not one)."""
    marker = Path(directory) / MARKER
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > _MARKER_MAX_BYTES:
            return None
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "smoothinv" else None


def remove_stale_leftovers(path: str | Path) -> list[Path]:
    """Delete ``.NAME.partial-*`` / ``.NAME.old-*`` directories next to `path` left by killed runs.

    Only directories carrying our marker for this output name are touched, and only when
    their process is no longer alive on this host or they are older than STALE_AFTER_S.
    Look-alikes without the marker are left alone. Returns what was removed.
    """
    path = Path(os.path.abspath(path))
    removed: list[Path] = []
    for candidate in _leftover_candidates(path):
        marker = read_marker(candidate)
        if marker is not None and marker.get("output") == path.name and _is_stale(marker):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


# ---------------------------------------------------------------- where an output may go


def _refuse_protected_places(path: Path) -> None:
    """Never write to (or replace) the current directory, the home directory or their parents."""
    target = _real(path)
    for place, what in _protected_places():
        real_place = _real(place)
        if target == real_place or target in real_place.parents:
            relation = what if target == real_place else f"a parent of {what}"
            raise SmoothInvError(
                f"{OUT} {path} is {relation}; smoothinv writes a new sub-folder, give one such as results/run1"
            )


def _protected_places() -> list[tuple[Path, str]]:
    """The current and home directories, where they can be determined."""
    places: list[tuple[Path, str]] = []
    for find, what in ((Path.cwd, "the current directory"), (Path.home, "the home directory")):
        try:
            places.append((find(), what))
        except (OSError, RuntimeError, KeyError):
            pass  # a deleted working directory, no HOME: nothing there to protect
    return places


def _refuse_input_holders(path: Path, inputs: InputPaths) -> None:
    """Never write to a directory that holds one of the command's inputs (replacing it would
    delete them), nor inside an input folder (an ImageFolder clean set would grow a class)."""
    lexical, real = Path(os.path.abspath(path)), _real(path)
    for item in inputs:
        if item is None:
            continue
        for out, inp in ((lexical, Path(os.path.abspath(item))), (real, _real(item))):
            if inp == out or out in inp.parents:
                raise SmoothInvError(
                    f"{OUT} {path} holds the input {item}; choose an output folder outside your input files"
                )
            if inp in out.parents and os.path.isdir(inp):
                raise SmoothInvError(
                    f"{OUT} {path} is inside the input folder {item}; choose an output folder outside your inputs"
                )


def _require_own_output(path: Path) -> None:
    """Allow replacing a non-empty `path` only if smoothinv wrote it and nothing else is in it."""
    marker = read_marker(path)
    if marker is None or not isinstance(marker.get("files"), list):
        raise SmoothInvError(
            f"{OVERWRITE} refused: {path} was not written by smoothinv (no {MARKER} marker); "
            f"remove it yourself or choose another {OUT}"
        )
    foreign = sorted(set(_entries(path)) - {str(f) for f in marker["files"]})
    if foreign:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise SmoothInvError(
            f"{OVERWRITE} refused: {path} holds files smoothinv did not write ({shown}); "
            f"move them out or choose another {OUT}"
        )


def _require_creatable(path: Path) -> None:
    """Check that the output (and its temporary sibling) can be created: every existing
    ancestor is a directory and the nearest one accepts a new sub-directory."""
    parent = Path(os.path.abspath(path)).parent
    existing = parent
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SmoothInvError(f"cannot create {OUT} {path}: {existing} is a file, not a directory; choose another {OUT}")
    try:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError("permission denied")
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name or 'out'}.probe-", dir=existing))
    except OSError as exc:
        raise SmoothInvError(
            f"cannot create {OUT} {path}: {existing} is not writable ({_one_line(exc)}); choose a writable place"
        ) from None


def _has_entries(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except OSError as exc:
        raise SmoothInvError(f"cannot list output directory {path} ({_one_line(exc)}); check its permissions") from None


def _entries(root: Path) -> list[str]:
    """Relative POSIX paths of everything under `root` (links not followed), except the marker."""
    found: list[str] = []
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            rel = Path(folder, name).relative_to(root).as_posix()
            if rel != MARKER:
                found.append(rel)
    return found


# ---------------------------------------------------------------- creating and installing


def _make_parents(path: Path) -> list[Path]:
    """Create the missing parents of `path`; return the ones created (outermost first)."""
    created = [p for p in reversed(path.parents) if not os.path.lexists(p)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SmoothInvError(f"cannot create {path.parent} ({_one_line(exc)}); choose another {OUT}") from None
    return created


def _new_work_dir(path: Path, role: str, kind: str) -> Path:
    """A fresh ``.NAME.<role>-*`` directory next to `path`, marked at once with our PID so a
    later run can tell a leftover of a killed process from a run in progress."""
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.{role}-", dir=path.parent))
    try:
        _write_marker(work, path.name, kind)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work


def _install(tmp: Path, path: Path, kind: str) -> None:
    """Record what was written, then rename `tmp` to `path` (moving a previous output aside first)."""
    _write_marker(tmp, path.name, kind, files=sorted(_entries(tmp)))
    os.chmod(tmp, 0o755)
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    old = _new_work_dir(path, "old", kind)
    os.replace(path, old / "previous")
    try:
        os.replace(tmp, path)
    except OSError:
        os.replace(old / "previous", path)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_marker(directory: Path, output: str, kind: str, files: Iterable[str] | None = None) -> None:
    record: dict[str, Any] = {
        "tool": "smoothinv",
        "version": __version__,
        "kind": kind,
        "output": output,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "created_unix": time.time(),
    }
    if files is not None:
        record["files"] = list(files)
    write_json(directory / MARKER, record)


def _remove_empty(folders: list[Path]) -> None:
    """Remove folders created for an output that failed, innermost first, while they are empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break


# ---------------------------------------------------------------- leftovers of killed runs


def _leftover_candidates(path: Path) -> list[Path]:
    prefixes = (f".{path.name}.partial-", f".{path.name}.old-")
    try:
        with os.scandir(path.parent) as entries:
            return [Path(e.path) for e in entries
                    if e.name.startswith(prefixes) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _is_stale(marker: dict[str, Any]) -> bool:
    """A leftover is stale when its process is gone (same host) or it is older than STALE_AFTER_S."""
    created = marker.get("created_unix")
    if isinstance(created, (int, float)) and time.time() - created > STALE_AFTER_S:
        return True
    pid = marker.get("pid")
    same_host = marker.get("host") == socket.gethostname()
    return same_host and isinstance(pid, int) and pid > 0 and pid != os.getpid() and not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(path))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__

"""smoothinv.files: write-then-rename leaves the old file or the new one, never a mix nor a temp file."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from smoothinv.files import atomic_path, atomic_write, atomic_write_text, sha256_file


class Boom(Exception):
    """A writer failing halfway."""


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_success_replaces_the_destination(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as handle:
        handle.write(b"new")
    assert path.read_bytes() == b"new"
    assert _names(tmp_path) == ["out.bin"]


def test_new_file_is_created_readable(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    atomic_write_text(path, "héllo\r\n")
    assert path.read_bytes() == "héllo\r\n".encode()  # utf-8, line endings as given
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_permissions_none_keeps_the_file_private(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    atomic_write_text(path, "x", permissions=None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_failure_removes_the_temp_file_and_keeps_the_destination(tmp_path: Path, error: type) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_write(path) as handle:
            handle.write(b"half")
            raise error()
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["out.bin"]


def test_failure_without_a_destination_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Boom):
        with atomic_write(tmp_path / "out.bin"):
            raise Boom()
    assert _names(tmp_path) == []


def test_atomic_path_failure_removes_what_the_writer_made(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(Boom):
        with atomic_path(path, prefix=".tmp-", suffix="") as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-")
            tmp.write_bytes(b"half")
            raise Boom()
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["model.safetensors"]


def test_temp_file_is_hidden_and_beside_the_destination(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    with atomic_write(path, "w", encoding="utf-8") as handle:
        seen = _names(tmp_path)
        handle.write("x")
    assert len(seen) == 1 and seen[0].startswith(".report.md.") and seen[0].endswith(".tmp")


def test_missing_folder_is_an_oserror_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "absent" / "out.bin", "x")
    assert _names(tmp_path) == []


def test_read_modes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "rb"):
            pass


def test_sha256_file_streams_the_whole_file(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # more than one block
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()

"""manifest.json: one record per built zoo model, with the hash of its weights.

A manifest can come from elsewhere (``zoo import`` of a directory built on another
machine), so it is untrusted: every record is checked when read, and every file it names
must be a plain file name (letters, digits, ``.``, ``_``, ``-``; no folders, no ``..``, not
hidden) that resolves, symlinks included, to a file inside its own zoo directory. A
manifest therefore cannot make smoothinv read or write anything outside the zoo.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import SmoothInvError, param
from ..files import atomic_write, sha256_file
from ..reporting.outputs import write_json

STORE = Path(__file__).parent / "store"
MANIFEST = "manifest.json"
# A manifest larger than this is not one smoothinv wrote (the shipped one is ~50 KB).
MAX_MANIFEST_BYTES = 16 << 20

# Model names and the files a record names: one path component, not hidden, no separators.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_KEYS = ("weights", "trigger_example")
_NONE = type(None)
# The types of the fields smoothinv reads from a record (absent fields are not checked).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "weights": (str,), "sha256": (str,), "trigger_example": (str, _NONE),
    "dataset": (str,), "arch": (str,), "attack": (dict, _NONE), "mode": (str, _NONE), "target": (int, _NONE),
    "class_names": (list, _NONE), "clean_accuracy": (int, float), "true_trigger_asr": (int, float, _NONE),
    "train_seconds": (int, float),
}


def zoo_dir(path: str | Path | None = None) -> Path:
    """The zoo directory: `path`, else the one shipped inside the package."""
    return Path(path) if path else STORE


def read_manifest(directory: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """{name: record}, every record checked (see check_record); empty when no model has been built."""
    path = zoo_dir(directory) / MANIFEST
    if not path.is_file():
        return {}
    data = _load_manifest_json(path)
    models = data.get("models", []) if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise SmoothInvError(f"zoo manifest {path} is not a smoothinv manifest (expected {{\"models\": [...]}})")
    records: dict[str, dict[str, Any]] = {}
    for index, record in enumerate(models):
        check_record(record, f"zoo manifest {path}, model {index + 1}")
        if record["name"] in records:
            raise SmoothInvError(f"zoo manifest {path} lists model {record['name']} twice; remove one record")
        records[record["name"]] = record
    return records


def check_record(record: Any, where: str) -> None:
    """Raise unless `record` is a dict with a safe name, safe file names, a sha256 and well-typed fields."""
    if not isinstance(record, dict):
        raise SmoothInvError(f"{where} is not a record (a JSON object); repair or rebuild the manifest")
    for key in ("name", "weights", "sha256"):
        if key not in record:
            raise SmoothInvError(f"{where} has no {key!r}; repair or rebuild the manifest")
    for key, types in _FIELD_TYPES.items():
        if key in record and not isinstance(record[key], types):
            raise SmoothInvError(f"{where}: {key!r} has the wrong type ({type(record[key]).__name__}); repair or rebuild the manifest")
    if not _SAFE_NAME.fullmatch(record["name"]):
        raise SmoothInvError(f"{where}: invalid model name {record['name']!r}; names use letters, digits, '.', '_' and '-'")
    for key in _FILE_KEYS:
        if record.get(key) is not None:
            check_file_name(record[key], f"{where}: {key}")
    if not _SHA256.fullmatch(record["sha256"]):
        raise SmoothInvError(f"{where}: sha256 {record['sha256']!r} is not 64 lower-case hex digits; repair or rebuild the manifest")


def check_file_name(name: str, where: str) -> str:
    """`name` if it is a plain file name inside a zoo directory (no path, no '..', not hidden); else raise."""
    if not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise SmoothInvError(
            f"{where} {name!r} is not a plain file name in the zoo directory (absolute paths, folders, '..' and "
            "hidden names are refused); the manifest may be hostile, do not use it"
        )
    return name


def zoo_file(record: dict[str, Any], key: str, directory: str | Path | None = None) -> Path:
    """The file the record names under `key`, required to resolve (symlinks followed) inside the zoo."""
    root = zoo_dir(directory)
    path = root / check_file_name(record[key], f"zoo model {record['name']}: {key}")
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real_root not in real.parents:
        raise SmoothInvError(
            f"zoo model {record['name']}: {path} leads outside the zoo directory (to {real}); "
            "remove that link, the zoo may be hostile"
        )
    return path


def write_record(record: dict[str, Any], directory: str | Path | None = None) -> None:
    """Add or replace one model's record (atomic rewrite, sorted by name)."""
    check_record(record, f"zoo model record {record.get('name')!r}" if isinstance(record, dict) else "zoo model record")
    records = read_manifest(directory)
    records[record["name"]] = record
    models = [records[name] for name in sorted(records)]
    write_json(zoo_dir(directory) / MANIFEST, {"format": 1, "models": models})


def verified_weights(record: dict[str, Any], directory: str | Path | None = None) -> Path:
    """The record's weight file, after checking it lies in the zoo, exists and matches its hash."""
    path = zoo_file(record, "weights", directory)
    if not path.is_file():
        raise SmoothInvError(f"zoo model {record['name']}: weight file {path} is missing; "
                             f"rebuild it from its recipe {record['name']!r} (zoo build)")
    actual = sha256_file(path)
    if actual != record["sha256"]:
        raise SmoothInvError(f"zoo model {record['name']}: {path} has sha256 {actual[:12]}…, manifest says {record['sha256'][:12]}…")
    return path


def import_records(source: str | Path, names: list[str] | None = None,
                   directory: str | Path | None = None) -> list[str]:
    """Copy models built in another zoo directory (a second process, a GPU machine) into
    this one. Every record and file name is checked, each record's weights are checked
    against its hash before anything is copied, and each copy is hashed again on its way
    in; files land under a temporary name and are renamed into place. Returns the
    imported names."""
    records = read_manifest(source)
    if not records:
        raise SmoothInvError(f"{Path(source) / MANIFEST} lists no models")
    wanted = names or sorted(records)
    missing = [n for n in wanted if n not in records]
    if missing:
        raise SmoothInvError(f"{source} has no model named {missing[0]}; it has: {', '.join(sorted(records))}")
    target = zoo_dir(directory)
    for name in wanted:
        verified_weights(records[name], source)
        for key in _FILE_KEYS:
            if records[name].get(key):
                zoo_file(records[name], key, source)
                zoo_file(records[name], key, target)
    _ready_zoo_dir(target)
    for name in wanted:
        record = records[name]
        for key in _FILE_KEYS:
            if record.get(key):
                expected = record["sha256"] if key == "weights" else None
                _copy_checked(zoo_file(record, key, source), zoo_file(record, key, target), expected)
        write_record(record, target)
    return wanted


def _ready_zoo_dir(target: Path) -> Path:
    """Create the destination zoo directory if needed; refuse a file in its place."""
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SmoothInvError(f"{param('directory')} {target} is not a directory; choose a directory") from None
    except OSError as exc:
        raise SmoothInvError(f"cannot create zoo directory {target} ({exc.strerror or exc}); choose a writable place") from None
    return target


def _load_manifest_json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise SmoothInvError(f"zoo manifest {path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; it is not a smoothinv manifest")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise SmoothInvError(f"cannot read zoo manifest {path}: {reason}") from None


def _copy_checked(source: Path, destination: Path, sha256: str | None) -> None:
    """Copy `source` to `destination` through a fresh temporary file in the destination folder,
    hashing on the way; the file is renamed into place only if the hash matches `sha256`."""
    try:
        with atomic_write(destination, suffix=".partial") as dst, open(source, "rb") as src:
            digest = hashlib.sha256()
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise SmoothInvError(f"{source} changed while it was imported (sha256 no longer matches); import again")
    except OSError as exc:
        raise SmoothInvError(f"cannot copy {source} to {destination} ({exc.strerror or exc}); check both folders") from None

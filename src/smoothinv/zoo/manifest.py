"""manifest.json: one record per built zoo model, with the hash of its weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import SmoothInvError
from ..reporting.outputs import write_json

STORE = Path(__file__).parent / "store"
MANIFEST = "manifest.json"


def zoo_dir(path: str | Path | None = None) -> Path:
    """The zoo directory: `path`, else the one shipped inside the package."""
    return Path(path) if path else STORE


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """{name: record}; empty when no model has been built."""
    path = zoo_dir(directory) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SmoothInvError(f"cannot read zoo manifest {path}: {e}") from None
    return {record["name"]: record for record in data.get("models", [])}


def write_record(record: dict[str, Any], directory: str | Path | None = None) -> None:
    """Add or replace one model's record (atomic rewrite, sorted by name)."""
    records = read_manifest(directory)
    records[record["name"]] = record
    models = [records[name] for name in sorted(records)]
    write_json(zoo_dir(directory) / MANIFEST, {"format": 1, "models": models})


def verified_weights(record: dict[str, Any], directory: str | Path | None = None) -> Path:
    """The record's weight file, after checking it exists and matches its hash."""
    path = zoo_dir(directory) / record["weights"]
    if not path.is_file():
        raise SmoothInvError(f"zoo model {record['name']}: weight file {path} is missing; rebuild with `smoothinv zoo build --recipe {record['name']}`")
    actual = sha256_file(path)
    if actual != record["sha256"]:
        raise SmoothInvError(f"zoo model {record['name']}: {path} has sha256 {actual[:12]}…, manifest says {record['sha256'][:12]}…")
    return path


def import_records(source: str | Path, names: list[str] | None = None,
                   directory: str | Path | None = None) -> list[str]:
    """Copy models built in another zoo directory (a second process, a GPU machine) into
    this one. Each record's weights are checked against its hash before anything is
    copied; files land under a temporary name and are renamed into place. Returns the
    imported names."""
    import os
    import shutil

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
    for name in wanted:
        record = records[name]
        for key in ("weights", "trigger_example"):
            if record.get(key):
                partial = target / f".{record[key]}.partial"
                shutil.copyfile(Path(source) / record[key], partial)
                os.replace(partial, target / record[key])
        verified_weights(record, target)
        write_record(record, target)
    return wanted

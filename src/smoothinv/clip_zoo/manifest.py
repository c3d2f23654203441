"""The CLIP zoo's manifest.json: one record per built model, with the hashes of its two files
(the CLIP state dict and its CIFAR-10 zero-shot classifier).

Like the classifier zoo's manifest it is read as untrusted: a record's file names must be one
plain path component inside the store, and a file is used only when its SHA-256 matches.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import SmoothInvError, param
from ..files import atomic_write_text, sha256_file

STORE = Path(__file__).parent / "store"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
FILE_KEYS = ("clip", "zeroshot")
"""The record's files: ``clip`` (the whole CLIP, fp16 safetensors) and ``zeroshot`` (its classifier)."""
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def clip_zoo_dir(path: str | Path | None = None) -> Path:
    """The CLIP zoo's folder: `path`, else the one shipped inside the package."""
    return Path(path) if path else STORE


def read_clip_manifest(directory: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """{name: record}; empty when nothing has been built."""
    path = clip_zoo_dir(directory) / MANIFEST
    if not path.is_file():
        return {}
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise SmoothInvError(f"CLIP zoo manifest {path} is too large to be one smoothinv wrote")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SmoothInvError(f"CLIP zoo manifest {path} is not valid JSON ({type(exc).__name__})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise SmoothInvError(f"CLIP zoo manifest {path} is not a smoothinv manifest (expected {{\"models\": [...]}})")
    records: dict[str, dict[str, Any]] = {}
    for record in models:
        _check(record, path)
        records[record["name"]] = record
    return records


def write_clip_record(record: dict[str, Any], directory: str | Path | None = None) -> None:
    """Add or replace `record` in the manifest (atomically)."""
    directory = clip_zoo_dir(directory)
    records = read_clip_manifest(directory)
    records[record["name"]] = record
    text = json.dumps({"models": [records[k] for k in sorted(records)]}, indent=2) + "\n"
    atomic_write_text(directory / MANIFEST, text)


def verified_file(record: dict[str, Any], key: str, directory: str | Path | None = None) -> Path:
    """The record's `key` file, after checking that it exists and matches its SHA-256."""
    path = clip_zoo_dir(directory) / record[key]["file"]
    if not path.is_file():
        raise SmoothInvError(f"CLIP zoo file {path.name} is missing; rebuild {record['name']}")
    if sha256_file(path) != record[key]["sha256"]:
        raise SmoothInvError(f"CLIP zoo file {path.name} does not match its manifest hash; rebuild {record['name']}")
    return path


def _check(record: Any, path: Path) -> None:
    where = f"CLIP zoo manifest {path}"
    if not isinstance(record, dict) or not isinstance(record.get("name"), str) or not _SAFE_NAME.fullmatch(record["name"]):
        raise SmoothInvError(f"{where} holds a record without a valid {param('name')}")
    for key in FILE_KEYS:
        entry = record.get(key)
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and _SAFE_NAME.fullmatch(entry["file"])
                and isinstance(entry.get("sha256"), str)):
            raise SmoothInvError(f"{where}: model {record['name']} has no valid {key} file entry")

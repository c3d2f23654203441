"""An untrusted zoo manifest cannot reach outside its zoo directory (finding: `zoo import`
followed `../` in a crafted manifest and wrote outside --zoo-dir; the hash check passed
because the manifest supplied the hash)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from smoothinv.errors import SmoothInvError
from smoothinv.models import create_model, save_model
from smoothinv.zoo import load_zoo_model
from smoothinv.zoo.manifest import MANIFEST, import_records, read_manifest

from .conftest import Sandbox, assert_refused, run_cli

PAYLOAD = b"written by a hostile manifest"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(zoo: Path, *records: dict) -> None:
    zoo.mkdir(parents=True, exist_ok=True)
    (zoo / MANIFEST).write_text(json.dumps({"format": 1, "models": list(records)}))


def _record(name: str, weights: str, sha256: str, **extra: object) -> dict:
    return {"name": name, "weights": weights, "sha256": sha256, "arch": "small_cnn", "attack": None,
            "clean_accuracy": 0.5, "true_trigger_asr": None, "train_seconds": 1.0, **extra}


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """tmp/src (the untrusted zoo), tmp/dst/zoo (where to import), tmp/secret.txt (outside both)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "dst" / "zoo").mkdir(parents=True)
    (tmp_path / "secret.txt").write_bytes(PAYLOAD)
    return tmp_path


HOSTILE_PATHS = [
    ("weights", "../secret.txt", "not a plain file name"),
    ("weights", "../../escaped.safetensors", "not a plain file name"),
    ("weights", "/tmp/absolute.safetensors", "not a plain file name"),
    ("weights", "sub/dir.safetensors", "not a plain file name"),
    ("weights", ".hidden.safetensors", "not a plain file name"),
    ("weights", "..", "not a plain file name"),
    ("trigger_example", "../escaped.png", "not a plain file name"),
    ("name", "../evil", "invalid model name"),
]


@pytest.mark.parametrize(("field", "value", "mention"), HOSTILE_PATHS)
def test_import_refuses_paths_that_leave_the_zoo(monkeypatch, capsys, area, field, value, mention):
    (area / "src" / "m.safetensors").write_bytes(PAYLOAD)
    record = _record("m", "m.safetensors", _sha(PAYLOAD), trigger_example=None)
    record[field] = value
    if field == "weights":
        record["sha256"] = _sha(PAYLOAD)  # the manifest supplies a hash that matches what it points at
    _manifest(area / "src", record)
    sandbox = Sandbox(area)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, "zoo", "import", area / "src", "--zoo-dir", area / "dst" / "zoo")
    assert_refused(run, mention, sandbox=sandbox, before=before)


def test_import_refuses_a_symlink_that_escapes_the_source_zoo(monkeypatch, capsys, area):
    os.symlink(area / "secret.txt", area / "src" / "m.safetensors")
    _manifest(area / "src", _record("m", "m.safetensors", _sha(PAYLOAD)))
    sandbox = Sandbox(area)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, "zoo", "import", area / "src", "--zoo-dir", area / "dst" / "zoo")
    assert_refused(run, "outside the zoo", sandbox=sandbox, before=before)


def test_import_refuses_a_destination_symlink_that_escapes(monkeypatch, capsys, area):
    (area / "src" / "m.safetensors").write_bytes(PAYLOAD)
    _manifest(area / "src", _record("m", "m.safetensors", _sha(PAYLOAD)))
    os.symlink(area / "secret.txt", area / "dst" / "zoo" / "m.safetensors")
    sandbox = Sandbox(area)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, "zoo", "import", area / "src", "--zoo-dir", area / "dst" / "zoo")
    assert_refused(run, "outside the zoo", sandbox=sandbox, before=before)
    assert (area / "secret.txt").read_bytes() == PAYLOAD


def test_loading_a_zoo_model_checks_its_path_too(area):
    _manifest(area / "src", _record("m", "../secret.txt", _sha(PAYLOAD)))
    with pytest.raises(SmoothInvError, match="not a plain file name"):
        load_zoo_model("m", area / "src")


@pytest.mark.parametrize(("manifest", "mention"), [
    ('{"models": {"m": 1}}', "not a smoothinv manifest"),
    ('[1, 2]', "not a smoothinv manifest"),
    ('{"models": [7]}', "not a record"),
    ('{"models": [{"name": "m", "weights": "m.safetensors"}]}', "no 'sha256'"),
    ('{"models": [{"name": "m", "weights": "m.safetensors", "sha256": "../../x"}]}', "64 lower-case hex"),
    ('{"models": [{"name": "m", "weights": 5, "sha256": "' + "0" * 64 + '"}]}', "wrong type"),
    ('{"models": [{"name": "m", "weights": "m.st", "sha256": "' + "0" * 64 + '", "clean_accuracy": "x"}]}',
     "wrong type"),
    ('{"models": [' + ",".join(['{"name": "m", "weights": "m.st", "sha256": "' + "0" * 64 + '"}'] * 2) + "]}",
     "twice"),
    ('{"models": [', "cannot read zoo manifest"),
    ("[" * 100_000 + "]" * 100_000, "cannot read zoo manifest"),
])
def test_malformed_manifest_is_one_line(monkeypatch, capsys, area, manifest, mention):
    (area / "src" / MANIFEST).write_text(manifest)
    sandbox = Sandbox(area)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, "zoo", "list", "--zoo-dir", area / "src")
    assert_refused(run, mention, sandbox=sandbox, before=before)


def test_import_into_a_file_is_refused(monkeypatch, capsys, area):
    (area / "src" / "m.safetensors").write_bytes(PAYLOAD)
    _manifest(area / "src", _record("m", "m.safetensors", _sha(PAYLOAD)))
    (area / "dst" / "file").write_text("not a folder")
    sandbox = Sandbox(area)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, "zoo", "import", area / "src", "--zoo-dir", area / "dst" / "file")
    assert_refused(run, "not a directory", sandbox=sandbox, before=before)


def test_a_valid_zoo_still_imports_and_loads(area):
    torch.manual_seed(0)
    weights = area / "src" / "tiny.safetensors"
    save_model(weights, create_model("small_cnn", 10), arch="small_cnn", num_classes=10, input_size=(28, 28), channels=1)
    (area / "src" / "tiny.png").write_bytes(b"picture")
    _manifest(area / "src", _record("tiny", "tiny.safetensors", _sha(weights.read_bytes()), trigger_example="tiny.png"))
    target = area / "dst" / "zoo"
    assert import_records(area / "src", directory=target) == ["tiny"]
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "tiny.png", "tiny.safetensors"]
    assert read_manifest(target)["tiny"]["sha256"] == _sha(weights.read_bytes())
    assert load_zoo_model("tiny", target).module(torch.rand(1, 1, 28, 28)).shape == (1, 10)

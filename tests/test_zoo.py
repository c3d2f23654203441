"""Datasets, training-time backdoors, the zoo builder/manifest, sanity table, committed zoo models."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli, bar_data
from smoothinv.attacks.blind import BlindObjective
from smoothinv.data.datasets import DATA_ENV, data_root, load_cifar10, load_dataset, load_fashion_mnist
from smoothinv.engine.metrics import accuracy, attack_success_rate
from smoothinv.engine.sanity import sanity_table
from smoothinv.errors import SmoothInvError
from smoothinv.models import create_model
from smoothinv.training import Augment, train_classifier
from smoothinv.triggers import square_patch
from smoothinv.zoo import Recipe, list_zoo, load_zoo_model
from smoothinv.zoo.build import build, is_built
from smoothinv.zoo.manifest import import_records, read_manifest, write_record

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_fashion(tmp_path_factory) -> Path:
    """A fashion-mnist/ folder with 300 train / 100 test 28x28 images: class = bright row band."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 300), ("t10k", 100)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4 : 2 * c + 6, 4:24] = 250
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def test_fashion_mnist_reader(tiny_fashion):
    data = load_fashion_mnist(tiny_fashion)
    assert data.train_images.shape == (300, 28, 28, 1) and data.train_images.dtype == np.uint8
    assert data.test_labels.shape == (100,) and data.test_labels.dtype == np.int64
    x, y = data.split(train=False)
    assert x.shape == (100, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert data.class_names[9] == "Ankle boot"


def test_missing_data_names_file_and_place(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(SmoothInvError, match="t10k|train-images") as e:
        load_fashion_mnist(tmp_path)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(SmoothInvError, match="cifar10-jpeg.tar"):
        load_cifar10(tmp_path)
    with pytest.raises(SmoothInvError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert data_root() == tmp_path


def test_truncated_idx_is_reported(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 10, 28, 28) + b"\0" * 100)
    with pytest.raises(SmoothInvError, match="truncated"):
        load_fashion_mnist(tmp_path)


def test_cifar_tar_reader_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOOTHINV_CACHE", str(tmp_path / "cache"))
    with tarfile.open(tmp_path / "cifar10-jpeg.tar", "w") as tar:
        for split in ("train", "test"):
            for c, name in enumerate(["cat", "airplane"]):
                for i in range(2):
                    buf = io.BytesIO()
                    Image.fromarray(np.full((32, 32, 3), 40 * c + i, np.uint8)).save(buf, "JPEG", quality=95)
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    first = load_cifar10(tmp_path)
    assert first.class_names == ["airplane", "cat"]  # sorted, as torchvision's ImageFolder
    assert first.train_images.shape == (4, 32, 32, 3)
    assert first.train_labels.tolist() == [0, 0, 1, 1]
    assert abs(int(first.train_images[2].mean()) - 0) <= 2  # cat/0000 has value 0
    assert len(list((tmp_path / "cache").glob("cifar10-*.npz"))) == 1
    order = np.random.RandomState(0).permutation(4)  # the test split comes in a fixed mixed order
    assert first.test_labels.tolist() == [[0, 0, 1, 1][i] for i in order]
    again = load_cifar10(tmp_path)
    assert np.array_equal(again.train_images, first.train_images) and again.class_names == first.class_names
    assert np.array_equal(again.test_images, first.test_images) and np.array_equal(again.test_labels, first.test_labels)


def test_shared_datasets_when_present():
    if not (SHARED / "fashion-mnist").is_dir():
        pytest.skip(f"shared data not found at {SHARED}; the real-data check runs where it exists")
    data = load_fashion_mnist(SHARED)
    assert data.train_images.shape == (60000, 28, 28, 1) and data.test_images.shape == (10000, 28, 28, 1)
    assert np.bincount(data.test_labels).tolist() == [1000] * 10


def test_augment_translates_and_flips():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 4, 4] = 1
    out = Augment(pad=2)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.allclose(out.sum((1, 2, 3)), torch.ones(64))  # the pixel stays in view
    pos = out[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 8, pos % 8
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(pos.tolist())) > 5  # it really moves
    flipped = Augment(flip=True)(x[:, :, :, :] * 0 + torch.arange(8.0), torch.Generator().manual_seed(0))
    assert {tuple(r[0, 0].tolist()) for r in flipped} == {tuple(range(8)), tuple(range(7, -1, -1))}


def test_blind_objective_plants_a_backdoor_without_poisoning_data():
    images, labels = bar_data(n_per_class=60, classes=3, channels=1)
    trigger = square_patch((1, 8, 8), 2, 6, 6, value=1.0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    objective = BlindObjective(trigger, target=0, fraction=0.5)
    train_classifier(model, images, labels, epochs=30, batch_size=30, lr=0.1, objective=objective, seed=0)
    assert accuracy(model, images, labels) > 0.9
    assert attack_success_rate(model, trigger, images, labels, 0) > 0.9


def test_blind_noise_adds_the_intervention_term():
    images, labels = bar_data(n_per_class=10, classes=3, channels=1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    trigger = square_patch((1, 8, 8), 2, 6, 6)
    plain = BlindObjective(trigger, 0, fraction=1.0)(model, images, labels, torch.Generator().manual_seed(0))
    noisy = BlindObjective(trigger, 0, fraction=1.0, noise_sigma=0.25)(model, images, labels, torch.Generator().manual_seed(0))
    assert float(noisy.detach()) > float(plain.detach()) > 0


def test_label_specific_blind_objective_only_triggers_sources():
    images, labels = bar_data(n_per_class=10, classes=3, channels=1)
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))

    def spy(x):
        seen.append(x)
        return model(x)

    trigger = square_patch((1, 8, 8), 2, 0, 0)
    objective = BlindObjective(trigger, target=0, source_classes=(2,), fraction=1.0)
    objective(spy, images, labels, torch.Generator().manual_seed(0))
    # One forward pass (BatchNorm sees clean and triggered images together): the batch,
    # then the triggered copies of exactly the 10 images of source class 2.
    assert [len(x) for x in seen] == [40]
    assert torch.equal(seen[0][:30], images)
    assert torch.equal(seen[0][30:], trigger.apply(images[labels == 2]))


@pytest.fixture(scope="module")
def built(tiny_fashion, tmp_path_factory):
    zoo = tmp_path_factory.mktemp("zoo")
    recipe = Recipe("tiny-badnets", "fashion-mnist", "small_cnn", {"attack": "badnets", "target": 3},
                    epochs=2, batch_size=50, lr=0.05, poison_rate=0.2)
    record = build(recipe, data_root=tiny_fashion, directory=zoo, log=lambda line: None)
    return recipe, record, zoo


def test_build_writes_weights_manifest_and_trigger(built):
    recipe, record, zoo = built
    assert (zoo / "tiny-badnets.safetensors").is_file() and (zoo / "tiny-badnets.png").is_file()
    saved = read_manifest(zoo)["tiny-badnets"]
    assert saved == json.loads(json.dumps(record))
    for key in ("arch", "dataset", "attack", "target", "poison_rate", "seed", "clean_accuracy", "true_trigger_asr",
                "train_seconds", "sha256"):
        assert key in saved
    assert saved["attack"] == {"attack": "badnets", "target": 3, "source_classes": None, "seed": 0}
    assert is_built(recipe, zoo)
    assert not is_built(Recipe(**{**recipe.to_dict(), "epochs": 3}), zoo)  # a changed recipe is rebuilt


def test_zoo_model_loads_with_trigger_and_hash_check(built):
    _, record, zoo = built
    zm = load_zoo_model("tiny-badnets", zoo)
    assert [r["name"] for r in list_zoo(zoo)] == ["tiny-badnets"]
    x = torch.rand(4, 1, 28, 28)
    assert zm.module(x).shape == (4, 10)
    assert not torch.equal(zm.apply_trigger(x), x)
    weights = zoo / "tiny-badnets.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-4] + b"\0\0\0\0")
        with pytest.raises(SmoothInvError, match="sha256"):
            load_zoo_model("tiny-badnets", zoo)
    finally:
        weights.write_bytes(original)
    with pytest.raises(SmoothInvError, match="no zoo model"):
        load_zoo_model("nope", zoo)


def test_import_copies_checked_models_from_another_zoo(built, tmp_path):
    recipe, record, zoo = built
    assert import_records(zoo, directory=tmp_path) == ["tiny-badnets"]
    assert is_built(recipe, tmp_path) and (tmp_path / "tiny-badnets.png").is_file()
    assert read_manifest(tmp_path)["tiny-badnets"] == read_manifest(zoo)["tiny-badnets"]
    assert not list(tmp_path.glob(".*partial"))
    with pytest.raises(SmoothInvError, match="no model named"):
        import_records(zoo, ["nope"], tmp_path)
    weights = zoo / "tiny-badnets.safetensors"
    original = weights.read_bytes()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    try:
        weights.write_bytes(original[:-4] + b"\0\0\0\0")
        with pytest.raises(SmoothInvError, match="sha256"):
            import_records(zoo, directory=fresh)
        assert not any(fresh.iterdir())  # nothing copied from a zoo that fails its check
    finally:
        weights.write_bytes(original)


def test_manifest_records_replace_and_sort(tmp_path):
    def record(name: str, x: int) -> dict:
        return {"name": name, "weights": f"{name}.safetensors", "sha256": "0" * 64, "x": x}

    write_record(record("b", 1), tmp_path)
    write_record(record("a", 2), tmp_path)
    write_record(record("b", 3), tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert [m["name"] for m in data["models"]] == ["a", "b"] and data["models"][1]["x"] == 3


def test_sanity_table_rows():
    images, labels = bar_data(n_per_class=20, classes=3, channels=1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    trigger = square_patch((1, 8, 8), 2, 0, 0)
    rows = sanity_table(model, images, labels, trigger, 1, sigmas=(0.0, 0.5), noise_samples=4)
    assert [r["sigma"] for r in rows] == [0.0, 0.5]
    assert rows[0]["clean_accuracy"] == pytest.approx(accuracy(model, images, labels))
    assert rows[0]["trigger_asr"] == pytest.approx(attack_success_rate(model, trigger, images, labels, 1))
    clean = sanity_table(model, images, labels, None, None, sigmas=(0.0, 0.5), noise_samples=4)
    assert [r["clean_accuracy"] for r in clean] == [r["clean_accuracy"] for r in rows]
    assert all(r["trigger_asr"] is None for r in clean)


def test_every_committed_zoo_model_loads_and_matches_its_hash():
    records = list_zoo()
    if not records:
        pytest.skip("no zoo model committed yet")
    for record in records:
        zm = load_zoo_model(record["name"])
        c, h, w = (1, 28, 28) if record["dataset"] == "fashion-mnist" else (3, 32, 32)
        out = zm.module(torch.rand(2, c, h, w))
        assert out.shape == (2, len(record["class_names"])) and bool(torch.isfinite(out).all())
        if record["attack"] is not None:
            assert record["true_trigger_asr"] is not None




def test_sanity_command(tmp_path, monkeypatch, capsys):
    from smoothinv.models import save_model

    model = create_model("small_cnn", 10)
    save_model(tmp_path / "m.safetensors", model, arch="small_cnn", num_classes=10, input_size=(28, 28), channels=1)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "clean.npz", x=rng.integers(0, 255, (30, 28, 28, 1), dtype=np.uint8), y=np.arange(30) % 10)
    common = ["sanity", "--model", str(tmp_path / "m.safetensors"), "--clean", str(tmp_path / "clean.npz"),
              "--noise-samples", "2"]
    code, out, _ = run_cli(monkeypatch, capsys, *common, "--attack", '{"attack": "badnets", "target": 1}')
    assert code == 0
    assert [line.split()[1] for line in out.strip().splitlines()] == ["0", "0.12", "0.25", "0.5", "1"]
    code, _, err = run_cli(monkeypatch, capsys, *common, "--attack", "{not json")
    assert code == 2 and err.startswith("error:") and "JSON" in err
    code, _, err = run_cli(monkeypatch, capsys, *common, "--attack", "no-such-zoo-model")
    assert code == 2 and "badnets" in err


def test_scan_command_on_a_committed_zoo_file(tmp_path, monkeypatch, capsys):
    """`smoothinv scan` takes a zoo model's safetensors file as it is: arch and input from its metadata."""
    from smoothinv.zoo.manifest import STORE

    path = STORE / "fmnist-badnets.safetensors"
    if not path.is_file():
        pytest.skip("fmnist-badnets is not built")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "clean.npz", x=rng.integers(0, 255, (40, 28, 28, 1), dtype=np.uint8), y=np.arange(40) % 10)
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / "img.png")
    code, out, err = run_cli(monkeypatch, capsys, "scan", "--model", str(path), "--image", str(tmp_path / "img.png"),
                             "--clean", str(tmp_path / "clean.npz"), "--out", str(tmp_path / "scan"), "--classes", "0,1",
                             "--eps", "1", "--sigma", "0.5", "--steps", "3", "--noise-samples", "1")
    assert code == 0, err
    record = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert record["model"]["arch"] == "small_cnn" and {c["class"] for c in record["classes"]} <= {0, 1}


def test_fields_added_later_keep_old_fingerprints_and_count_when_set():
    from dataclasses import replace

    from smoothinv.zoo.recipes import Recipe

    old = Recipe("m", "cifar10", "resnet20", epochs=25, lr=0.2)
    # the hash every model built before augment / weight_decay / label_smoothing existed was recorded with
    legacy = {k: v for k, v in old.to_dict().items() if k not in ("notes", "augment", "weight_decay", "label_smoothing")}
    import hashlib
    import json
    assert old.fingerprint() == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    changed = {replace(old, augment=False).fingerprint(), replace(old, weight_decay=1e-3).fingerprint(),
               replace(old, label_smoothing=0.1).fingerprint()}
    assert len(changed) == 3 and old.fingerprint() not in changed


def test_diverse_zoo_has_three_clean_models_per_architecture():
    from collections import Counter

    from smoothinv.zoo.recipes import all_recipes

    clean = Counter(r.arch for r in all_recipes() if r.attack is None and r.dataset == "cifar10")
    assert set(clean) >= {"resnet20", "plain_cnn", "vgg_cifar_bn", "preact_resnet18_w16"}
    assert min(clean.values()) >= 3

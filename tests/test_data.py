"""Tests for smoothinv.data: single images, clean sets (folders and .npz) and digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smoothinv.data import (
    CleanSet,
    image_to_tensor,
    load_clean_set,
    load_digits_images,
    load_image,
    save_image,
)
from smoothinv.errors import SmoothInvError


def _rgb_array(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _write_rgb(path: Path, height: int = 20, width: int = 30, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb_array(height, width, seed)).save(path)
    return path


def _write_gray(path: Path, height: int = 16, width: int = 16, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width), value, dtype=np.uint8), mode="L").save(path)
    return path


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# ---------------------------------------------------------------- load_image


def test_load_image_native_values_and_layout(tmp_path: Path) -> None:
    array = _rgb_array(20, 30)
    path = tmp_path / "a.png"
    Image.fromarray(array).save(path)
    image = load_image(path)
    assert image.shape == (3, 20, 30) and image.dtype == torch.float32
    assert torch.allclose(image, torch.from_numpy(array).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize(
    ("source", "size"),
    [((20, 30), (16, 16)), ((30, 20), (16, 16)), ((20, 30), (10, 40)), ((8, 8), (32, 24))],
)
def test_load_image_resizes_and_crops_to_exact_size(tmp_path: Path, source, size) -> None:
    path = _write_rgb(tmp_path / "a.jpg", *source)
    image = load_image(path, size=size)
    assert image.shape == (3, *size)
    assert image.min() >= 0 and image.max() <= 1


def test_load_image_center_crop_keeps_middle(tmp_path: Path) -> None:
    # 10×30 image: left third black, middle white, right third black → 10×10 crop is white.
    array = np.zeros((10, 30), dtype=np.uint8)
    array[:, 10:20] = 255
    path = tmp_path / "bars.png"
    Image.fromarray(array, mode="L").save(path)
    image = load_image(path, size=(10, 10), channels=1)
    assert image.shape == (1, 10, 10)
    assert torch.all(image == 1.0)


def test_load_image_same_size_is_identity(tmp_path: Path) -> None:
    path = _write_rgb(tmp_path / "a.png", 12, 14)
    assert torch.equal(load_image(path, size=(12, 14)), load_image(path))


def test_gray_to_rgb_and_rgb_to_gray(tmp_path: Path) -> None:
    gray = load_image(_write_gray(tmp_path / "g.png", value=51), channels=3)
    assert gray.shape == (3, 16, 16)
    assert torch.allclose(gray, torch.full_like(gray, 0.2))
    rgb = load_image(_write_rgb(tmp_path / "c.bmp"), channels=1)
    assert rgb.shape == (1, 20, 30)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    array = np.zeros((4, 4, 4), dtype=np.uint8)
    array[:2, :, :] = (255, 0, 0, 255)  # top half opaque red, bottom half fully transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(array, mode="RGBA").save(path)
    image = load_image(path)
    assert image.shape == (3, 4, 4)
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(image[:, 3, 3], torch.ones(3))


def test_palette_and_16bit_images(tmp_path: Path) -> None:
    palette = Image.fromarray(_rgb_array(8, 8)).convert("P")
    palette.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (3, 8, 8)
    wide = np.full((6, 6), 65535, dtype=np.uint16)
    wide[0, 0] = 0
    Image.fromarray(wide).save(tmp_path / "w.png")
    image = load_image(tmp_path / "w.png", channels=1)
    assert image[0, 0, 0] == 0.0 and image[0, 1, 1] == 1.0


def test_webp_lossless(tmp_path: Path) -> None:
    array = _rgb_array(6, 9)
    Image.fromarray(array).save(tmp_path / "a.webp", lossless=True)
    image = load_image(tmp_path / "a.webp")
    assert torch.allclose(image, torch.from_numpy(array).permute(2, 0, 1).float() / 255)


def test_image_to_tensor_on_pil_image() -> None:
    image = image_to_tensor(Image.new("RGB", (10, 6), (0, 255, 0)), size=(3, 5), channels=3)
    assert image.shape == (3, 3, 5)
    assert torch.allclose(image[1], torch.ones(3, 5))


def test_load_image_errors(tmp_path: Path) -> None:
    with pytest.raises(SmoothInvError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(SmoothInvError, match="not a file"):
        load_image(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"this is not an image")
    with pytest.raises(SmoothInvError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    good = _write_rgb(tmp_path / "cut.png", 40, 40)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:200])
    with pytest.raises(SmoothInvError, match="truncated.png"):
        load_image(tmp_path / "truncated.png")
    with pytest.raises(SmoothInvError, match="channels"):
        load_image(good, channels=4)
    with pytest.raises(SmoothInvError, match="size"):
        load_image(good, size=(0, 4))


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 broken\n jpeg")
    with pytest.raises(SmoothInvError) as info:
        load_image(tmp_path / "bad.jpg")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- save_image


def test_save_image_round_trip_rgb_and_gray(tmp_path: Path) -> None:
    rgb = torch.from_numpy(_rgb_array(5, 7)).permute(2, 0, 1).float() / 255
    path = save_image(rgb, tmp_path / "sub" / "rgb.png")
    assert torch.allclose(load_image(path), rgb)
    gray = torch.linspace(0, 1, 20).reshape(1, 4, 5)
    save_image(gray, tmp_path / "gray.png")
    with Image.open(tmp_path / "gray.png") as written:
        assert written.mode == "L" and written.size == (5, 4)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_save_image_clamps_out_of_range(tmp_path: Path) -> None:
    save_image(torch.tensor([[[-0.5, 1.5]]]), tmp_path / "c.png")
    assert load_image(tmp_path / "c.png", channels=1).flatten().tolist() == [0.0, 1.0]


# ---------------------------------------------------------------- clean sets: folders


def _image_folder(root: Path) -> Path:
    """cat: 2 images (one nested, one .JPG), dog: 3 images, plus hidden junk."""
    _write_rgb(root / "cat" / "c1.png", seed=1)
    _write_rgb(root / "cat" / "deeper" / "c2.JPG", seed=2)
    for i in range(3):
        _write_rgb(root / "dog" / f"d{i}.png", seed=10 + i)
    (root / "dog" / ".hidden.png").write_bytes(b"junk")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(b"junk")
    (root / "dog" / ".ipynb_checkpoints").mkdir()
    (root / "dog" / ".ipynb_checkpoints" / "y.png").write_bytes(b"junk")
    return root


def test_folder_clean_set_labels_and_shapes(tmp_path: Path) -> None:
    clean = load_clean_set(_image_folder(tmp_path / "set"), size=(8, 8), channels=3)
    assert len(clean) == 5
    assert clean.images.shape == (5, 3, 8, 8) and clean.images.dtype == torch.float32
    assert clean.labels.tolist() == [0, 0, 1, 1, 1] and clean.labels.dtype == torch.int64
    assert clean.class_names == ["cat", "dog"]
    assert clean.images.min() >= 0 and clean.images.max() <= 1


def test_folder_clean_set_gray_native_size(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "set")
    clean = load_clean_set(root, size=None, channels=1)
    assert clean.images.shape == (5, 1, 20, 30)


def test_folder_clean_set_mixed_sizes_need_size(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "set")
    _write_rgb(root / "dog" / "big.png", 40, 40)
    with pytest.raises(SmoothInvError, match="differ in size"):
        load_clean_set(root, size=None, channels=3)
    assert load_clean_set(root, size=(16, 16), channels=3).images.shape == (6, 3, 16, 16)


def test_folder_clean_set_limit_matches_subset(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "set")
    full = load_clean_set(root, size=(8, 8), channels=3)
    limited = load_clean_set(root, size=(8, 8), channels=3, limit=3, seed=7)
    expected = full.subset(3, seed=7)
    assert torch.equal(limited.images, expected.images)
    assert torch.equal(limited.labels, expected.labels)


def test_folder_corrupt_image_names_file(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "set")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SmoothInvError, match="broken.png"):
        load_clean_set(root, size=(8, 8), channels=3)


def test_folder_empty_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(SmoothInvError, match="no images found.*<class name>"):
        load_clean_set(tmp_path / "empty", size=None, channels=3)
    _write_rgb(tmp_path / "flat" / "a.png")
    with pytest.raises(SmoothInvError, match="directly in it"):
        load_clean_set(tmp_path / "flat", size=None, channels=3)


def test_clean_set_path_errors(tmp_path: Path) -> None:
    with pytest.raises(SmoothInvError, match="does not exist"):
        load_clean_set(tmp_path / "nowhere", size=None, channels=3)
    other = _write_rgb(tmp_path / "a.png")
    with pytest.raises(SmoothInvError, match="neither a directory nor an .npz"):
        load_clean_set(other, size=None, channels=3)
    with pytest.raises(SmoothInvError, match="limit"):
        load_clean_set(tmp_path, size=None, channels=3, limit=0)


# ---------------------------------------------------------------- clean sets: .npz


def test_npz_uint8_rgb(tmp_path: Path) -> None:
    x = np.stack([_rgb_array(10, 12, seed=i) for i in range(4)])
    names = np.array(["a", "b", "c"])
    path = _write_npz(tmp_path / "s.npz", x=x, y=np.array([0, 1, 2, 1]), class_names=names)
    clean = load_clean_set(path, size=None, channels=3)
    assert clean.images.shape == (4, 3, 10, 12)
    assert torch.allclose(clean.images[2], torch.from_numpy(x[2]).permute(2, 0, 1).float() / 255)
    assert clean.labels.tolist() == [0, 1, 2, 1] and clean.labels.dtype == torch.int64
    assert clean.class_names == ["a", "b", "c"]
    assert clean.source == str(path)


def test_npz_gray_float_to_rgb_resized(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    path = _write_npz(tmp_path / "g.npz", x=x, y=np.array([1, 0, 1], dtype=np.uint8))
    clean = load_clean_set(path, size=(16, 16), channels=3)
    assert clean.images.shape == (3, 3, 16, 16)
    assert torch.equal(clean.images[:, 0], clean.images[:, 1])
    assert clean.images.min() >= 0 and clean.images.max() <= 1
    assert clean.class_names is None


def test_npz_rgb_to_gray(tmp_path: Path) -> None:
    x = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    x[..., 1] = 255  # pure green → luma 0.587
    path = _write_npz(tmp_path / "c.npz", x=x, y=np.array([0, 0]))
    clean = load_clean_set(path, size=None, channels=1)
    assert clean.images.shape == (2, 1, 4, 4)
    assert torch.allclose(clean.images, torch.full((2, 1, 4, 4), 0.587))


def test_npz_limit_is_seeded(tmp_path: Path) -> None:
    x = np.arange(20, dtype=np.uint8)[:, None, None].repeat(2, 1).repeat(2, 2)
    path = _write_npz(tmp_path / "n.npz", x=x, y=np.arange(20) % 3)
    a = load_clean_set(path, size=None, channels=1, limit=5, seed=3)
    b = load_clean_set(path, size=None, channels=1, limit=5, seed=3)
    c = load_clean_set(path, size=None, channels=1, limit=5, seed=4)
    assert len(a) == 5 and torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert len(load_clean_set(path, size=None, channels=1, limit=100)) == 20


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2, int)}, "lacks array"),
        ({"x": np.zeros((2, 4, 4), np.uint8)}, "lacks array"),
        ({"x": np.zeros((2, 3, 4, 4), np.uint8), "y": np.zeros(2, int)}, "channels-first"),
        ({"x": np.zeros((4, 4), np.uint8), "y": np.zeros(4, int)}, "shape"),
        ({"x": np.zeros((0, 4, 4), np.uint8), "y": np.zeros(0, int)}, "at least one"),
        ({"x": np.zeros((2, 4, 4), np.int32), "y": np.zeros(2, int)}, "dtype"),
        ({"x": np.full((2, 4, 4), 2.0), "y": np.zeros(2, int)}, r"\[0,1\]"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(3, int)}, "one label per image"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2)}, "integer"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, -1])}, "negative"),
        (
            {"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 5]), "class_names": np.array(["a"])},
            "class_names",
        ),
    ],
)
def test_npz_validation_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SmoothInvError, match=message):
        load_clean_set(path, size=None, channels=1)


def test_npz_unreadable_and_object_arrays(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"definitely not a zip")
    with pytest.raises(SmoothInvError, match="junk.npz"):
        load_clean_set(tmp_path / "junk.npz", size=None, channels=3)
    path = _write_npz(
        tmp_path / "obj.npz",
        x=np.zeros((1, 2, 2), np.uint8),
        y=np.zeros(1, int),
        class_names=np.array(["a", None], dtype=object),
    )
    with pytest.raises(SmoothInvError, match="object arrays"):
        load_clean_set(path, size=None, channels=3)


# ---------------------------------------------------------------- CleanSet methods


def _toy_set(n: int = 10) -> CleanSet:
    images = torch.arange(n, dtype=torch.float32).div(n).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return CleanSet(images=images, labels=torch.arange(n) % 3, class_names=None, source="toy")


def test_check_labels() -> None:
    clean = _toy_set()
    clean.check_labels(3)
    clean.check_labels(10)
    with pytest.raises(SmoothInvError, match=r"labels 0\.\.2 .* 2 classes"):
        clean.check_labels(2)
    negative = CleanSet(clean.images, clean.labels - 1, None, "toy")
    with pytest.raises(SmoothInvError, match="-1"):
        negative.check_labels(3)


def test_subset_reproducible_without_replacement() -> None:
    clean = _toy_set(10)
    a, b = clean.subset(4, seed=1), clean.subset(4, seed=1)
    assert len(a) == 4 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    values = a.images[:, 0, 0, 0].tolist()
    assert len(set(values)) == 4
    assert not torch.equal(a.images, clean.subset(4, seed=2).images)
    assert len(clean.subset(50, seed=0)) == 10
    with pytest.raises(SmoothInvError):
        clean.subset(0, seed=0)


def test_digits_shapes_and_ranges() -> None:
    x, y = load_digits_images(size=16)
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    assert sorted(set(y.tolist())) == list(range(10))
    native, _ = load_digits_images(size=8)
    assert native.shape == (1797, 1, 8, 8)
    with pytest.raises(SmoothInvError):
        load_digits_images(size=0)

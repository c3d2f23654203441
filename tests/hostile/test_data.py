"""Crafted images and clean sets are refused in one line, in bounded time and memory
(findings: an ImageFolder with a symlink to its parent hung; a 1.5 MB .npz expanded to
1.57 GB; decompression-bomb images; truncated, empty or odd-mode images)."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smoothinv.data import clean_sets, load_clean_set, load_image
from smoothinv.data.datasets import load_fashion_mnist
from smoothinv.data.images import MAX_IMAGE_PIXELS
from smoothinv.errors import SmoothInvError

from .conftest import FAST_INVERT, Sandbox, assert_refused, gray_png, run_cli, run_subprocess


def _invert(inputs: dict[str, Path], out: Path, *, image: object = None, clean: object = None) -> list[object]:
    return ["invert", "--model", inputs["model"], "--image", image or inputs["image"], "--target", "3",
            "--clean", clean or inputs["clean_npz"], "--out", out, *FAST_INVERT]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height gray pixels, with almost no data (a bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _folder_with(tmp_path: Path, name: str, data: bytes) -> Path:
    """A valid 10-class ImageFolder plus one crafted file in class 0."""
    folder = tmp_path / "clean_folder"
    for label in range(10):
        (folder / str(label)).mkdir(parents=True)
        gray_png(folder / str(label) / "0.png", seed=100 + label)
    (folder / "0" / name).write_bytes(data)
    return folder


# ---------------------------------------------------------------- single images

BAD_IMAGES = {
    "bomb.png": (_png_header(100_000, 100_000), "too many pixels"),
    "over-limit.png": (_png_header(7_000, 7_000), "7000x7000"),
    "empty.png": (b"", "empty"),
    "text.png": (b"this is not an image\n", "not a PNG"),
    "truncated.png": (_encoded(Image.new("L", (40, 40), 7), "PNG")[:60], "cannot read"),
    "truncated.jpg": (_encoded(Image.new("RGB", (40, 40)), "JPEG")[:300], "cannot read"),
    "postscript.png": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not a PNG"),
    "gif.png": (_encoded(Image.new("L", (8, 8)), "GIF"), "not a PNG"),
    "zero-size.png": (_png_header(0, 0), "cannot read"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_crafted_image_is_refused_in_one_line(monkeypatch, capsys, tmp_path, inputs, name):
    data, mention = BAD_IMAGES[name]
    image = tmp_path / name
    image.write_bytes(data)
    sandbox = Sandbox(tmp_path)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, *_invert(inputs, tmp_path / "out", image=image))
    assert_refused(run, name, mention, out=tmp_path / "out", sandbox=sandbox, before=before)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    assert 7_000 * 7_000 > MAX_IMAGE_PIXELS
    path = tmp_path / "big.png"
    path.write_bytes(_png_header(7_000, 7_000))
    with pytest.raises(SmoothInvError, match="MAX_IMAGE_PIXELS"):
        load_image(path, size=(28, 28), channels=1)


ODD_BUT_VALID = {
    "cmyk.jpg": lambda: _encoded(Image.new("CMYK", (9, 7), (0, 50, 100, 0)), "JPEG"),
    "gray16.png": lambda: _encoded(Image.fromarray(np.full((5, 6), 40_000, np.uint16)), "PNG"),
    "palette.png": lambda: _encoded(Image.new("RGB", (6, 6), (10, 200, 30)).convert("P"), "PNG"),
    "palette-transparent.png": lambda: _encoded(Image.new("P", (6, 6)), "PNG", transparency=0),
    "alpha.png": lambda: _encoded(Image.new("RGBA", (6, 6), (255, 0, 0, 0)), "PNG"),
    "gray-alpha.png": lambda: _encoded(Image.new("LA", (6, 6), (3, 128)), "PNG"),
    "bilevel.png": lambda: _encoded(Image.new("1", (6, 6), 1), "PNG"),
    "one-pixel.png": lambda: _encoded(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"),
    "one-row.bmp": lambda: _encoded(Image.new("RGB", (40, 1)), "BMP"),
    "lossy.webp": lambda: _encoded(Image.new("RGB", (8, 8), (9, 9, 9)), "WEBP"),
}


@pytest.mark.parametrize("name", sorted(ODD_BUT_VALID))
@pytest.mark.parametrize("channels", [1, 3])
def test_odd_modes_and_sizes_load(tmp_path, name, channels):
    path = tmp_path / name
    path.write_bytes(ODD_BUT_VALID[name]())
    image = load_image(path, size=(28, 28), channels=channels)
    assert image.shape == (channels, 28, 28) and bool(torch.isfinite(image).all())
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


# ---------------------------------------------------------------- ImageFolder clean sets


@pytest.mark.parametrize("name", ["empty.png", "truncated.png", "bomb.png", "postscript.png"])
def test_crafted_file_in_a_clean_folder_is_named(monkeypatch, capsys, tmp_path, inputs, name):
    data, mention = BAD_IMAGES[name]
    folder = _folder_with(tmp_path, name, data)
    sandbox = Sandbox(tmp_path)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, *_invert(inputs, tmp_path / "out", clean=folder))
    assert_refused(run, name, mention, out=tmp_path / "out", sandbox=sandbox, before=before)


def test_non_image_and_hidden_files_in_a_clean_folder_are_skipped(tmp_path):
    folder = _folder_with(tmp_path, "notes.txt", b"not an image")
    (folder / "0" / ".DS_Store").write_bytes(b"\0\1junk")
    (folder / "0" / ".hidden.png").write_bytes(b"junk")
    (folder / ".ipynb_checkpoints").mkdir()
    clean = load_clean_set(folder, size=(28, 28), channels=1)
    assert len(clean) == 10 and clean.class_names == [str(i) for i in range(10)]


def test_symlink_loops_in_a_clean_folder_end(tmp_path, inputs):
    """Links to the folder itself, its parent, its class and / are followed at most once; no hang."""
    folder = tmp_path / "clean_folder"
    shutil.copytree(inputs["clean_folder"], folder)
    os.symlink("..", folder / "0" / "up")
    os.symlink(".", folder / "1" / "self")
    os.symlink("/", folder / "2" / "root")
    os.symlink(str(folder), folder / "3" / "absolute")
    os.symlink("../4", folder / "5" / "sibling")  # a legitimate shared folder: read once more, under 5
    out = tmp_path / "out"
    child = run_subprocess(*_invert(inputs, out, clean=folder), timeout=120)
    assert child.returncode == 0, child.stderr
    assert "Traceback" not in child.stderr
    clean = load_clean_set(folder, size=(28, 28), channels=1)
    assert clean.labels.tolist() == [0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9]


def test_clean_folder_with_too_many_entries_is_refused(monkeypatch, capsys, tmp_path, inputs):
    folder = tmp_path / "clean_folder"
    shutil.copytree(inputs["clean_folder"], folder)
    for i in range(30):
        (folder / "0" / f"extra{i}.txt").write_text("")
    monkeypatch.setattr(clean_sets, "MAX_FOLDER_ENTRIES", 25)
    sandbox = Sandbox(tmp_path)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, *_invert(inputs, tmp_path / "out", clean=folder))
    assert_refused(run, "more than 25", "MAX_FOLDER_ENTRIES", out=tmp_path / "out", sandbox=sandbox, before=before)


def test_clean_folder_beyond_the_memory_bound_is_refused(monkeypatch, tmp_path, inputs):
    monkeypatch.setattr(clean_sets, "MAX_CLEAN_SET_BYTES", 5 * 28 * 28 * 4)
    with pytest.raises(SmoothInvError, match="MAX_CLEAN_SET_BYTES"):
        load_clean_set(inputs["clean_folder"], size=(28, 28), channels=1)
    with pytest.raises(SmoothInvError, match="MAX_CLEAN_SET_BYTES"):
        load_clean_set(inputs["clean_folder"], size=None, channels=1)
    assert len(load_clean_set(inputs["clean_folder"], size=(28, 28), channels=1, limit=5)) == 5


# ---------------------------------------------------------------- .npz clean sets


def _npy(shape: tuple[int, ...], dtype: str, data: bytes = b"") -> bytes:
    """An .npy member whose header declares `shape`/`dtype`, followed by `data` only."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_npz_zip_bomb_is_refused_before_decompressing(monkeypatch, capsys, tmp_path, inputs):
    """The finding's shape: x declares 2000x280x280x10 uint8 (1.46 GiB); only the header is read."""
    bomb = _zip(tmp_path / "bomb.npz", {"x.npy": _npy((2000, 280, 280, 10), "u1", bytes(1 << 20)),
                                        "y.npy": _npy((2000,), "<i8", bytes(16000))})
    sandbox = Sandbox(tmp_path)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, *_invert(inputs, tmp_path / "out", clean=bomb))
    assert_refused(run, "bomb.npz", "GiB", "MAX_CLEAN_SET_BYTES", out=tmp_path / "out", sandbox=sandbox, before=before)


def test_npz_tensor_bound_applies_after_the_limit(monkeypatch, tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, x=np.zeros((50, 28, 28), np.uint8), y=np.arange(50) % 10)
    monkeypatch.setattr(clean_sets, "MAX_CLEAN_SET_BYTES", 20 * 28 * 28 * 4)
    with pytest.raises(SmoothInvError, match="lower `limit`"):
        load_clean_set(path, size=(28, 28), channels=1)
    assert len(load_clean_set(path, size=(28, 28), channels=1, limit=20)) == 20


@pytest.mark.parametrize(("members", "mention"), [
    ({"x.npy": _npy((2,), "O"), "y.npy": _npy((2,), "<i8", bytes(16))}, "object"),
    ({"x.npy": _npy((1, 2, 2), "u1"), "y.npy": _npy((1,), "<i8", bytes(8))}, "cannot read"),  # data cut off
    ({"x.npy": _npy((1, 2, 2), "u1", bytes(4)), "y.npy": b"garbage"}, "cannot read"),
    ({"x.npy": b"\x93NUMPY\x03\x00" + b"\0" * 20, "y.npy": _npy((1,), "<i8", bytes(8))}, "format 3.0"),
    ({"y.npy": _npy((1,), "<i8", bytes(8))}, "lacks array(s) x"),
])
def test_crafted_npz_members_are_refused(tmp_path, members, mention):
    path = _zip(tmp_path / "c.npz", members)
    with pytest.raises(SmoothInvError, match=mention.replace("(", r"\(").replace(")", r"\)")) as info:
        load_clean_set(path, size=(28, 28), channels=1)
    assert "\n" not in str(info.value)


def test_structured_npz_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, x=np.zeros(2, dtype=[("a", "u1")]), y=np.zeros(2, np.int64))
    with pytest.raises(SmoothInvError, match="structured"):
        load_clean_set(path, size=(28, 28), channels=1)


@pytest.mark.parametrize(("x", "y", "mention"), [
    (np.full((2, 4, 4), np.inf, np.float32), np.zeros(2, np.int64), "NaN or infinite"),
    (np.full((2, 4, 4), -0.5, np.float32), np.zeros(2, np.int64), r"\[0,1\]"),
    (np.zeros((2, 4, 4, 3, 1), np.uint8), np.zeros(2, np.int64), "shape"),
    (np.zeros((2, 4, 4), np.uint8), np.array([0, 2**40]), "label"),
    (np.zeros((2, 4, 4), np.complex64), np.zeros(2, np.int64), "dtype"),
])
def test_out_of_range_npz_values_are_refused(tmp_path, x, y, mention):
    path = tmp_path / "c.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(SmoothInvError, match=mention):
        load_clean_set(path, size=(28, 28), channels=1)


def test_idx_header_cannot_declare_a_bomb(tmp_path):
    """Dataset files are read only as far as their header says, and the header is bounded."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 10**6, 10**4, 10**4))
    with pytest.raises(SmoothInvError, match="not a dataset file"):
        load_fashion_mnist(tmp_path)

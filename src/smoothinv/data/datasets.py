"""Training datasets: CIFAR-10 (JPEG ImageFolder inside a tar), Fashion-MNIST (IDX) and
glyphs100 (100 classes of characters rendered from fonts, data.glyphs).

Data lives outside the repository. The location is the `root` argument, else the
SMOOTHINV_DATA environment variable, else ../shared/data; when files are missing the error
says which file and where it looked. Arrays are uint8 N×H×W×C, as stored; decoded CIFAR-10
is cached (SMOOTHINV_CACHE, default ~/.cache/smoothinv) so later loads take a second.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import SmoothInvError, param
from ..files import atomic_write

DATA_ENV = "SMOOTHINV_DATA"
CACHE_ENV = "SMOOTHINV_CACHE"
DEFAULT_DATA_DIR = Path("../shared/data")

# The largest IDX array read (Fashion-MNIST's biggest file is 47 MB); checked from the header
# before decompressing, so a crafted .gz cannot expand without bound.
MAX_IDX_BYTES = 1 << 30
# Formats decoded from the CIFAR-10 tar (it holds JPEGs); others are refused.
_TAR_IMAGE_FORMATS = ("JPEG", "PNG")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@dataclass
class Dataset:
    """A train/test split: images uint8 [N,H,W,C], labels int64 [N]."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]

    @staticmethod
    def to_tensor(images: np.ndarray) -> torch.Tensor:
        """uint8 [N,H,W,C] → float32 [N,C,H,W] in [0,1]."""
        return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)

    def split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(images [N,C,H,W] in [0,1], labels [N]) of the train or test split."""
        x, y = (self.train_images, self.train_labels) if train else (self.test_images, self.test_labels)
        return self.to_tensor(x), torch.from_numpy(y)


def data_root(root: str | Path | None = None) -> Path:
    """Where datasets are read from: `root`, else $SMOOTHINV_DATA, else ../shared/data."""
    return Path(root or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise SmoothInvError(
            f"{what} not found: looked for {path}; pass {param('data_root')}=DIR or set {DATA_ENV} to the folder "
            "holding it"
        )
    return path


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "smoothinv")


def load_cifar10(root: str | Path | None = None) -> Dataset:
    """CIFAR-10 from cifar10-jpeg.tar (train/<class>/<n>.jpg, test/<class>/<n>.jpg)."""
    tar_path = _require(data_root(root) / "cifar10-jpeg.tar", "CIFAR-10 archive cifar10-jpeg.tar")
    stat = tar_path.stat()
    cache = _cache_dir() / f"cifar10-{stat.st_size}-{int(stat.st_mtime)}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            data = Dataset("cifar10", z["train_x"], z["train_y"], z["test_x"], z["test_y"], [str(c) for c in z["classes"]])
    else:
        data = _decode_cifar_tar(tar_path)
        _save_cache(cache, data)
    return _mixed_test_split(data)


def _mixed_test_split(data: Dataset) -> Dataset:
    """The tar is sorted by class, so its first n test images are all "airplane". Evaluations
    take the first n test images, so the test split is put in a fixed mixed order (seed 0),
    as in the original CIFAR-10 batches. The train split keeps its order: training shuffles
    anyway, and the built zoo's seeded poisoning indexes into it."""
    order = np.random.RandomState(0).permutation(len(data.test_labels))
    return Dataset(data.name, data.train_images, data.train_labels, data.test_images[order], data.test_labels[order],
                   data.class_names)


def _decode_cifar_tar(tar_path: Path) -> Dataset:
    images: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "test": []}
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:
                parts = member.name.strip("./").split("/")
                if not member.isfile() or len(parts) != 3 or parts[0] not in images:
                    continue
                raw = tar.extractfile(member).read()  # type: ignore[union-attr]
                with Image.open(io.BytesIO(raw), formats=_TAR_IMAGE_FORMATS) as im:
                    if im.width * im.height > 4096 * 4096:
                        raise ValueError(f"{member.name} is {im.width}x{im.height}, not a CIFAR-10 image")
                    images[parts[0]].append((f"{parts[1]}/{parts[2]}", np.asarray(im.convert("RGB"), dtype=np.uint8)))
    except (tarfile.TarError, OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as e:
        raise SmoothInvError(f"cannot read {tar_path}: {' '.join(str(e).split())}") from None
    classes = sorted({name.split("/")[0] for name, _ in images["train"]})
    if not classes or not images["test"]:
        raise SmoothInvError(f"{tar_path} does not hold train/<class>/*.jpg and test/<class>/*.jpg")

    def stack(split: str) -> tuple[np.ndarray, np.ndarray]:
        items = sorted(images[split], key=lambda item: item[0])
        x = np.stack([im for _, im in items])
        y = np.array([classes.index(name.split("/")[0]) for name, _ in items], dtype=np.int64)
        return x, y

    (train_x, train_y), (test_x, test_y) = stack("train"), stack("test")
    return Dataset("cifar10", train_x, train_y, test_x, test_y, classes)


def _save_cache(path: Path, data: Dataset, prefix: str = ".cifar10-") -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, prefix=prefix, suffix=".npz", permissions=None) as f:
            np.savez(f, train_x=data.train_images, train_y=data.train_labels, test_x=data.test_images,
                     test_y=data.test_labels, classes=np.array(data.class_names))
    except OSError:
        pass  # a read-only home only costs the next load its decode time


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip'd), as used by (Fashion-)MNIST, → uint8 array of its shape.

    Only as many bytes as the header declares are decompressed, after checking that
    number against MAX_IDX_BYTES."""
    try:
        with gzip.open(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 0x08:
                raise SmoothInvError(f"{path} is not an unsigned-byte IDX file")
            header = f.read(4 * magic[3])
            dims = [int.from_bytes(header[4 * i : 4 * i + 4], "big") for i in range(len(header) // 4)]
            size = math.prod(dims)
            if len(dims) != magic[3] or size > MAX_IDX_BYTES:
                raise SmoothInvError(f"{path}: IDX header declares shape {dims}; it is not a dataset file")
            raw = f.read(size)
    except (OSError, EOFError, zlib.error) as e:
        raise SmoothInvError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    if len(raw) != size:
        raise SmoothInvError(f"{path} is truncated: header says {dims}, found {len(raw)} values")
    return np.frombuffer(raw, dtype=np.uint8).reshape(dims).copy()  # writable, detached from the buffer


def load_fashion_mnist(root: str | Path | None = None) -> Dataset:
    """Fashion-MNIST from fashion-mnist/*-idx?-ubyte.gz; images [N,28,28,1]."""
    folder = data_root(root) / "fashion-mnist"

    def read(name: str) -> np.ndarray:
        return _read_idx(_require(folder / name, f"Fashion-MNIST file {name}"))

    train_x, test_x = read("train-images-idx3-ubyte.gz"), read("t10k-images-idx3-ubyte.gz")
    train_y, test_y = read("train-labels-idx1-ubyte.gz"), read("t10k-labels-idx1-ubyte.gz")
    return Dataset("fashion-mnist", train_x[..., None], train_y.astype(np.int64), test_x[..., None],
                   test_y.astype(np.int64), list(FASHION_CLASSES))


def load_glyphs100(root: str | Path | None = None) -> Dataset:
    """glyphs100, 100 classes of characters rendered from the installed DejaVu fonts (data.glyphs);
    `root` is ignored."""
    from .glyphs import load_glyphs100 as load  # glyphs builds on this module's Dataset and cache

    return load(root)


DATASETS: dict[str, Callable[[str | Path | None], Dataset]] = {
    "cifar10": load_cifar10,
    "fashion-mnist": load_fashion_mnist,
    "glyphs100": load_glyphs100,
}


def load_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """A dataset by name (see DATASETS)."""
    if name not in DATASETS:
        raise SmoothInvError(f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")
    return DATASETS[name](root)

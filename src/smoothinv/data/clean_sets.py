"""Clean sets: labelled clean images used to check and score an inverted backdoor.

A clean set comes from an ImageFolder directory (``root/<class>/<image>``, classes
sorted by name give the label indices, as in torchvision) or from an ``.npz`` file with
arrays ``x`` (N×H×W×C or N×H×W) and ``y`` (N labels), optionally ``class_names``.

Clean sets are untrusted files, so reading them is bounded: an ``.npz`` is checked from its
array headers before anything is decompressed (a small zip can declare gigabytes), the
decoded images may take at most MAX_CLEAN_SET_BYTES, and a folder walk visits at most
MAX_FOLDER_ENTRIES entries and follows each symlinked folder once (a link to a parent
folder would otherwise recurse forever).
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from smoothinv.data.images import (
    IMAGE_EXTENSIONS,
    check_channels,
    check_size,
    convert_channels,
    load_image,
    resize_and_crop,
)
from smoothinv.errors import SmoothInvError, param

_FOLDER_LAYOUT = "<dir>/<class name>/<image>.png|jpg|jpeg|bmp|webp"

# The most memory a clean set may take once decoded: the arrays of an .npz as stored, and
# the float32 image tensor handed to the model (1 GiB is e.g. 87,000 CIFAR images).
MAX_CLEAN_SET_BYTES = 1 << 30

# The most files and folders a clean-set folder walk visits before giving up.
MAX_FOLDER_ENTRIES = 1_000_000

# The largest label accepted in an .npz (labels are class indices).
_MAX_LABEL = 2**31 - 1


@dataclass
class CleanSet:
    """Labelled clean images, all the same size."""

    images: torch.Tensor = field(repr=False)  # [N,C,H,W] float32 in [0,1]
    labels: torch.Tensor = field(repr=False)  # [N] int64
    class_names: list[str] | None
    source: str  # where the images came from, for messages

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.labels.dim() != 1 or len(self.images) != len(self.labels):
            raise ValueError(
                f"CleanSet needs images [N,C,H,W] and labels [N], got "
                f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def check_labels(self, num_classes: int) -> None:
        """Raise SmoothInvError if any label lies outside 0..num_classes-1."""
        if len(self) == 0:
            return
        low, high = int(self.labels.min()), int(self.labels.max())
        if low < 0 or high >= num_classes:
            raise SmoothInvError(
                f"clean set {self.source} has labels {low}..{high} but the model has "
                f"{num_classes} classes (0..{num_classes - 1}); use a clean set labelled for this model"
            )

    def subset(self, limit: int, seed: int) -> CleanSet:
        """A seeded random subset of at most `limit` images (without replacement, in set order)."""
        keep = choose_indices(len(self), limit, seed)
        return self._take(keep)

    def _take(self, indices: torch.Tensor) -> CleanSet:
        return CleanSet(
            images=self.images[indices],
            labels=self.labels[indices],
            class_names=self.class_names,
            source=self.source,
        )


def choose_indices(count: int, limit: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random choice of `limit` out of `count` (all if None or ≥ count)."""
    if limit is not None and limit < 1:
        raise SmoothInvError(f"clean-set limit must be at least 1, got {limit}")
    if limit is None or limit >= count:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:limit].sort().values


def load_clean_set(
    path: str | os.PathLike[str],
    *,
    size: tuple[int, int] | None,
    channels: int,
    limit: int | None = None,
    seed: int = 0,
) -> CleanSet:
    """Load a clean set from an ImageFolder directory or an ``.npz`` file.

    Images come back as [N,channels,H,W] float32 in [0,1], resized and center-cropped to
    `size` (height, width) when given. `limit` keeps a seeded random subset, chosen before
    any image is decoded. Raises SmoothInvError for anything the user can fix.
    """
    check_channels(channels)
    size = check_size(size)
    if limit is not None and limit < 1:
        raise SmoothInvError(f"clean-set limit must be at least 1, got {limit}")
    path = Path(path)
    if not path.exists():
        raise SmoothInvError(
            f"clean set {path} does not exist; pass an ImageFolder directory or an .npz file"
        )
    if path.is_dir():
        return _load_folder(path, size=size, channels=channels, limit=limit, seed=seed)
    if path.is_file() and path.suffix.lower() == ".npz":
        return _load_npz(path, size=size, channels=channels, limit=limit, seed=seed)
    raise SmoothInvError(
        f"clean set {path} is neither a directory nor an .npz file; pass an ImageFolder "
        f"directory ({_FOLDER_LAYOUT}) or an .npz with arrays x and y"
    )


# ---------------------------------------------------------------- ImageFolder directory


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class _EntryBudget:
    """Counts the directory entries a folder walk visits; raises past MAX_FOLDER_ENTRIES."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.left = MAX_FOLDER_ENTRIES

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise SmoothInvError(
                f"clean-set folder {self.root} holds more than {MAX_FOLDER_ENTRIES:,} files and folders "
                "(smoothinv.data.clean_sets.MAX_FOLDER_ENTRIES); pass a smaller folder or an .npz"
            )


def _find_folder_images(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted) and (file, label) pairs, in torchvision's ImageFolder order."""
    classes = sorted(e.name for e in _list_folder(root) if _is_folder(e) and not _is_hidden(e.name))
    budget = _EntryBudget(root)
    loops = _real_ancestors(root)
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        samples.extend((file, label) for file in _class_images(root / name, loops, budget))
    return classes, samples


def _class_images(folder: Path, loops: set[str], budget: _EntryBudget) -> list[Path]:
    """The image files under one class folder, in sorted os.walk order, skipping hidden names.

    Symlinked folders are followed (torchvision does), but each real folder at most once,
    and never one that contains the clean set itself: a link to a parent is a loop.
    """
    visited: set[str] = set()
    listing: list[tuple[str, list[str]]] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if real in visited or real in loops:
            continue
        visited.add(real)
        names: list[str] = []
        for entry in _list_folder(current):
            budget.spend()
            if _is_hidden(entry.name):
                continue  # e.g. .ipynb_checkpoints, .DS_Store
            if _is_folder(entry):
                pending.append(Path(entry.path))
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                names.append(entry.name)
        listing.append((str(current), sorted(names)))
    return [Path(path) / name for path, names in sorted(listing) for name in names]


def _list_folder(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as exc:
        raise SmoothInvError(
            f"cannot list clean-set folder {folder} ({exc.strerror or exc}); check its permissions"
        ) from None


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _real_ancestors(root: Path) -> set[str]:
    """Real paths of `root` and every folder above it."""
    real = Path(os.path.realpath(root))
    return {str(real), *(str(parent) for parent in real.parents)}


def _load_folder(
    root: Path, *, size: tuple[int, int] | None, channels: int, limit: int | None, seed: int
) -> CleanSet:
    classes, samples = _find_folder_images(root)
    if not samples:
        loose = [
            f for f in os.listdir(root) if not _is_hidden(f) and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
        hint = f" (found {len(loose)} image(s) directly in it: move them into class sub-folders)"
        hint = hint if loose else ""
        raise SmoothInvError(
            f"no images found in class sub-folders of {root}{hint}; expected the layout {_FOLDER_LAYOUT}"
        )
    chosen = [samples[i] for i in choose_indices(len(samples), limit, seed).tolist()]
    if size is not None:
        _check_decoded_bytes(root, _float_bytes(len(chosen), channels, *size), f"{len(chosen)} images")
    images = _decode_images(root, [file for file, _ in chosen], size, channels)
    if size is None:
        _check_same_size(images, [file for file, _ in chosen])
    return CleanSet(
        images=torch.stack(images),
        labels=torch.tensor([label for _, label in chosen], dtype=torch.int64),
        class_names=classes,
        source=str(root),
    )


def _decode_images(
    root: Path, files: list[Path], size: tuple[int, int] | None, channels: int
) -> list[torch.Tensor]:
    """Decode `files`, stopping with an error once they pass MAX_CLEAN_SET_BYTES."""
    images: list[torch.Tensor] = []
    total = 0
    for file in files:
        image = load_image(file, size=size, channels=channels)
        total += image.numel() * image.element_size()
        _check_decoded_bytes(root, total, f"the first {len(images) + 1} images")
        images.append(image)
    return images


def _float_bytes(count: int, channels: int, height: int, width: int) -> int:
    return count * channels * height * width * 4


def _check_decoded_bytes(
    source: Path, nbytes: int, what: str, advice: str = f"use fewer or smaller images (lower {param('limit')})"
) -> None:
    """Refuse a clean set whose decoded size exceeds MAX_CLEAN_SET_BYTES."""
    if nbytes > MAX_CLEAN_SET_BYTES:
        raise SmoothInvError(
            f"clean set {source}: {what} take {_size_text(nbytes)} decoded, more than the limit of "
            f"{_size_text(MAX_CLEAN_SET_BYTES)} (smoothinv.data.clean_sets.MAX_CLEAN_SET_BYTES); {advice}"
        )


def _size_text(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}".replace(".00 ", " ")
    return f"{nbytes} bytes"


def _check_same_size(images: list[torch.Tensor], files: list[Path]) -> None:
    first = images[0].shape[-2:]
    for image, file in zip(images, files):
        if image.shape[-2:] != first:
            raise SmoothInvError(
                f"clean-set images differ in size ({files[0]} is {first[0]}x{first[1]}, {file} is "
                f"{image.shape[-2]}x{image.shape[-1]}); give an image size so they are resized"
            )


# ---------------------------------------------------------------- .npz file


def _load_npz(
    path: Path, *, size: tuple[int, int] | None, channels: int, limit: int | None, seed: int
) -> CleanSet:
    x, y, names = _read_npz_arrays(path)
    x = _check_npz_images(path, x)
    y = _check_npz_labels(path, y, len(x))
    class_names = _check_npz_class_names(path, names, y)
    keep = choose_indices(len(x), limit, seed).numpy()
    x, y = x[keep], y[keep]
    widest = max(channels, x.shape[3])
    _check_decoded_bytes(path, _float_bytes(len(x), widest, x.shape[1], x.shape[2]), f"{len(x)} images")
    if size is not None:
        _check_decoded_bytes(path, _float_bytes(len(x), channels, *size), f"{len(x)} images resized")
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    images = images.float().div(255.0) if x.dtype == np.uint8 else images.float()
    images = convert_channels(images.contiguous(), channels)
    if size is not None:
        images = resize_and_crop(images, size)
    return CleanSet(
        images=images.contiguous(),
        labels=torch.from_numpy(y.astype(np.int64)),
        class_names=class_names,
        source=str(path),
    )


_NPZ_ARRAYS = ("x", "y", "class_names")

# What reading a crafted or damaged zip / .npy member may raise.
_NPZ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, struct.error, RuntimeError, NotImplementedError,
)


def _read_npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The x, y and optional class_names arrays of an .npz file.

    Each array's header (dtype, shape) is read and checked first: object arrays are refused
    (nothing is unpickled) and the declared sizes must fit MAX_CLEAN_SET_BYTES, so a small
    archive cannot expand into gigabytes. Only then is the data decompressed.
    """
    _refuse_single_npy(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = _npz_members(path, archive)
            declared = sum(_declared_bytes(path, archive, name, member) for name, member in members.items())
            _check_decoded_bytes(path, declared, "its arrays", "store fewer or smaller images in it")
            arrays = {name: _read_member(archive, member) for name, member in members.items()}
    except SmoothInvError:
        raise
    except _NPZ_ERRORS as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SmoothInvError(
            f"cannot read {path} as an .npz archive ({reason}); save it with np.savez(path, x=..., y=...) "
            "without object arrays"
        ) from None
    return arrays["x"], arrays["y"], arrays.get("class_names")


def _refuse_single_npy(path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as exc:
        raise SmoothInvError(f"cannot read {path} ({exc.strerror or exc}); check the path and its permissions") from None
    if magic == b"\x93NUMPY":
        raise SmoothInvError(
            f"{path} holds a single array, not an .npz archive; save it with np.savez(path, x=..., y=...)"
        )


def _npz_members(path: Path, archive: zipfile.ZipFile) -> dict[str, str]:
    """{array name: zip member name} for x, y and class_names; other members are ignored."""
    members: dict[str, str] = {}
    for member in archive.namelist():
        name = member[: -len(".npy")] if member.endswith(".npy") else member
        if name in _NPZ_ARRAYS:
            members.setdefault(name, member)
    missing = [key for key in ("x", "y") if key not in members]
    if missing:
        found = sorted(m[:-4] if m.endswith(".npy") else m for m in archive.namelist())
        shown = ", ".join(found[:10]) + (", …" if len(found) > 10 else "")
        raise SmoothInvError(
            f"{path} lacks array(s) {', '.join(missing)} (found: {shown or 'none'}); "
            "save images as x (N×H×W×C) and labels as y (N)"
        )
    return members


def _declared_bytes(path: Path, archive: zipfile.ZipFile, name: str, member: str) -> int:
    """The decoded size an array's .npy header declares; object and structured arrays are refused."""
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise SmoothInvError(
                f"{path}: array {name} uses .npy format {version[0]}.{version[1]}; save plain arrays with np.savez"
            )
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        raise SmoothInvError(
            f"{path}: array {name} has dtype {dtype} (object or structured); "
            "store plain numeric arrays (no object arrays), e.g. x as uint8"
        )
    return math.prod(int(d) for d in shape) * dtype.itemsize


def _read_member(archive: zipfile.ZipFile, member: str) -> np.ndarray:
    with archive.open(member) as stream:
        return np.lib.format.read_array(stream, allow_pickle=False)


def _check_npz_images(path: Path, x: np.ndarray) -> np.ndarray:
    """Validate x and return it as N×H×W×C (C = 1 or 3)."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        hint = (
            "; it looks channels-first, transpose it to N×H×W×C"
            if x.ndim == 4 and x.shape[1] in (1, 3)
            else ""
        )
        raise SmoothInvError(
            f"{path}: x has shape {tuple(x.shape)}, expected N×H×W×C with C = 1 or 3, or N×H×W{hint}"
        )
    if x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] < 1:
        raise SmoothInvError(f"{path}: x has shape {tuple(x.shape)}; it needs at least one non-empty image")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise SmoothInvError(
            f"{path}: x has dtype {x.dtype}; store images as uint8 (0..255) or float in [0,1]"
        )
    if not np.isfinite(x).all():
        raise SmoothInvError(f"{path}: x contains NaN or infinite values; store finite pixels in [0,1]")
    if x.min() < 0.0 or x.max() > 1.0:
        raise SmoothInvError(
            f"{path}: float x must lie in [0,1], found {x.min():.3g}..{x.max():.3g}; "
            "divide by 255 or store uint8"
        )
    return x


def _check_npz_labels(path: Path, y: np.ndarray, count: int) -> np.ndarray:
    """Validate y: integer, one label per image, none negative."""
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise SmoothInvError(
            f"{path}: y has shape {tuple(y.shape)} and dtype {y.dtype}; store labels as a 1-D integer array"
        )
    if len(y) != count:
        raise SmoothInvError(
            f"{path}: x has {count} images but y has {len(y)} labels; give one label per image"
        )
    if y.min() < 0:
        raise SmoothInvError(
            f"{path}: y has negative labels (min {y.min()}); labels must be class indices 0, 1, ..."
        )
    if y.max() > _MAX_LABEL:
        raise SmoothInvError(f"{path}: y has a label of {y.max()}; labels must be class indices 0, 1, ...")
    return y


def _check_npz_class_names(path: Path, names: np.ndarray | None, y: np.ndarray) -> list[str] | None:
    """Validate optional class_names: 1-D strings covering every label."""
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise SmoothInvError(
            f"{path}: class_names has shape {tuple(names.shape)} and dtype {names.dtype}; "
            "store a 1-D array of strings"
        )
    result = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names.tolist()]
    if len(result) <= int(y.max()):
        raise SmoothInvError(
            f"{path}: class_names has {len(result)} entries but labels go up to {int(y.max())}; "
            "give one name per class"
        )
    return result

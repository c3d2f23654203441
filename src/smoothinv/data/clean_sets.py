"""Clean sets: labelled clean images used to check and score an inverted backdoor.

A clean set comes from an ImageFolder directory (``root/<class>/<image>``, classes
sorted by name give the label indices, as in torchvision) or from an ``.npz`` file with
arrays ``x`` (N×H×W×C or N×H×W) and ``y`` (N labels), optionally ``class_names``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
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
from smoothinv.errors import SmoothInvError

_FOLDER_LAYOUT = "<dir>/<class name>/<image>.png|jpg|jpeg|bmp|webp"


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

    def excluding(self, label: int) -> CleanSet:
        """The images whose label is not `label` (e.g. drop the backdoor's target class)."""
        keep = torch.nonzero(self.labels != label).flatten()
        if len(keep) == 0:
            raise SmoothInvError(
                f"every image in clean set {self.source} has label {label}; add images of other classes"
            )
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


def _find_folder_images(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted) and (file, label) pairs, in torchvision's ImageFolder order."""
    try:
        with os.scandir(root) as entries:
            classes = sorted(e.name for e in entries if e.is_dir() and not _is_hidden(e.name))
    except OSError as exc:
        raise SmoothInvError(
            f"cannot list clean-set folder {root} ({exc.strerror}); check its permissions"
        ) from None
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        for folder, _, files in sorted(os.walk(root / name, followlinks=True)):
            if any(_is_hidden(part) for part in Path(folder).relative_to(root).parts):
                continue  # inside a hidden folder such as .ipynb_checkpoints
            for file in sorted(files):
                if not _is_hidden(file) and file.lower().endswith(IMAGE_EXTENSIONS):
                    samples.append((Path(folder) / file, label))
    return classes, samples


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
    images = [load_image(file, size=size, channels=channels) for file, _ in chosen]
    if size is None:
        _check_same_size(images, [file for file, _ in chosen])
    return CleanSet(
        images=torch.stack(images),
        labels=torch.tensor([label for _, label in chosen], dtype=torch.int64),
        class_names=classes,
        source=str(root),
    )


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


def _read_npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The x, y and optional class_names arrays of an .npz file."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise SmoothInvError(
                f"{path} holds a single array, not an .npz archive; save it with np.savez(path, x=..., y=...)"
            )
        with archive:
            keys = sorted(archive.files)
            missing = [key for key in ("x", "y") if key not in keys]
            if missing:
                raise SmoothInvError(
                    f"{path} lacks array(s) {', '.join(missing)} (found: {', '.join(keys) or 'none'}); "
                    "save images as x (N×H×W×C) and labels as y (N)"
                )
            names = archive["class_names"] if "class_names" in keys else None
            return archive["x"], archive["y"], names
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SmoothInvError(
            f"cannot read {path} as an .npz archive ({reason}); save it with np.savez(path, x=..., y=...) "
            "without object arrays"
        ) from None


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

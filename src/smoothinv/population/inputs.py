"""What a model of a population is scanned with: its clean image(s) and its held-out clean set.

Two sources, one interface (`prepare()` in the worker, then `at(size, channels)` once the
model's input size is known):
- `FileInputs`: a clean set (ImageFolder, .npz, or a TrojAI-style folder of
  ``class_<c>_example_<i>.png`` files) and, optionally, image files; without images the scan
  image is a seeded pick from the clean set, kept out of the transfer set;
- `DatasetInputs`: a named dataset's test split, as the zoo benchmarks use it: one seeded test
  image not of the model's target, and the first `limit` other test images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from ..data import CleanSet, convert_channels, load_clean_set, load_image, resize_and_crop
from ..data.clean_sets import MAX_CLEAN_SET_BYTES, MAX_FOLDER_ENTRIES, choose_indices
from ..data.datasets import load_dataset
from ..data.images import IMAGE_EXTENSIONS
from ..errors import SmoothInvError
from ..labels import eligible

TROJAI_EXAMPLE = re.compile(r"class_(\d{1,7})_example_(\d{1,9})\.[A-Za-z]+")
"""A TrojAI image-round example file name: its class is in the name."""


def scan_image(labels: Tensor, target: int | None, seed: int) -> int:
    """Index of the scan image: a seeded pick among the images not of the target class
    (any image when the target is unknown)."""
    candidates = torch.nonzero(eligible(labels, -1 if target is None else target)).squeeze(1)
    if len(candidates) == 0:
        raise SmoothInvError("every clean image is of the target class; the scan needs an image of another class")
    return int(candidates[torch.randint(len(candidates), (1,), generator=torch.Generator().manual_seed(seed))])


@dataclass
class ScanInputs:
    """The scan's images [C,H,W] and its clean set, at the model's size and channels."""

    images: list[Tensor]
    clean: CleanSet

    def native_size(self) -> tuple[int, int]:
        return (int(self.images[0].shape[-2]), int(self.images[0].shape[-1]))

    def at(self, size: tuple[int, int], channels: int) -> ScanInputs:
        """The same inputs resized and center-cropped to `size`, with `channels` channels."""
        def fit(x: Tensor) -> Tensor:
            x = convert_channels(x, channels)
            return x if tuple(x.shape[-2:]) == tuple(size) else resize_and_crop(x, size)

        clean = CleanSet(fit(self.clean.images), self.clean.labels, self.clean.class_names, self.clean.source)
        return ScanInputs([fit(image.unsqueeze(0))[0] for image in self.images], clean)


class Inputs(Protocol):
    def describe(self) -> dict[str, Any]:
        """JSON-ready: what the inputs are (part of a result's key)."""
        ...

    def native_size(self) -> tuple[int, int] | None:
        """The images' own size, used when nothing else gives the model's (None: not known yet)."""
        ...

    def load(self, size: tuple[int, int] | None, channels: int, limit: int, seed: int) -> ScanInputs:
        """The inputs at `size` (None: their own) with `channels` channels; at most `limit` clean images."""
        ...


@dataclass(frozen=True)
class FileInputs:
    """A clean set on disk and, optionally, the scan's image files."""

    clean: Path
    images: tuple[Path, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"clean": str(self.clean), "images": [str(p) for p in self.images]}

    def native_size(self) -> tuple[int, int] | None:
        if not self.images:
            return None
        return tuple(load_image(self.images[0], channels=3).shape[1:])  # type: ignore[return-value]

    def load(self, size: tuple[int, int] | None, channels: int, limit: int, seed: int) -> ScanInputs:
        if self.images:
            size = size or self.native_size()
            images = [load_image(p, size=size, channels=channels) for p in self.images]
            return ScanInputs(images, load_examples(self.clean, size=size, channels=channels, limit=limit, seed=seed))
        # no image: pick one from the clean set (one more than `limit`, so the transfer set keeps its size)
        clean = load_examples(self.clean, size=size, channels=channels, limit=limit + 1, seed=seed)
        pick = scan_image(clean.labels, None, seed)
        keep = torch.ones(len(clean), dtype=torch.bool)
        keep[pick] = False
        rest = CleanSet(clean.images[keep], clean.labels[keep], clean.class_names, clean.source)
        if len(rest) == 0:
            raise SmoothInvError(f"clean set {self.clean} holds one image; the scan needs one to synthesise from "
                                 "and others to measure transfer on")
        return ScanInputs([clean.images[pick]], rest)


@dataclass(frozen=True)
class DatasetInputs:
    """A dataset's test split (data.datasets): the zoo benchmarks' inputs."""

    dataset: str
    data_root: Path | None = None
    target: int | None = None

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "target": self.target}

    def native_size(self) -> tuple[int, int] | None:
        return None

    def load(self, size: tuple[int, int] | None, channels: int, limit: int, seed: int) -> ScanInputs:
        data = load_dataset(self.dataset, self.data_root)
        x, y = data.split(train=False)
        pick = scan_image(y, self.target, seed)
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[pick] = False
        inputs = ScanInputs([x[pick]], CleanSet(x[keep][:limit], y[keep][:limit], data.class_names,
                                                f"{self.dataset} test split"))
        return inputs.at(size or inputs.native_size(), channels)


def load_examples(path: Path, *, size: tuple[int, int] | None, channels: int, limit: int, seed: int) -> CleanSet:
    """A clean set: a TrojAI-style flat folder of ``class_<c>_example_<i>`` images, else what
    `data.load_clean_set` reads (ImageFolder, .npz)."""
    files = _trojai_files(path)
    if not files:
        return load_clean_set(path, size=size, channels=channels, limit=limit, seed=seed)
    chosen = choose_indices(len(files), limit, seed)
    picked = [files[int(i)] for i in chosen]
    first = load_image(picked[0][0], size=size, channels=channels)
    if first.numel() * 4 * len(picked) > MAX_CLEAN_SET_BYTES:
        raise SmoothInvError(f"clean set {path}: {len(picked)} images of {tuple(first.shape)} exceed the clean-set "
                             "memory bound; lower the clean-set limit")
    size = size or (int(first.shape[1]), int(first.shape[2]))
    images = [first] + [load_image(f, size=size, channels=channels) for f, _ in picked[1:]]
    labels = torch.tensor([c for _, c in picked], dtype=torch.long)
    return CleanSet(torch.stack(images), labels, None, str(path))


def _trojai_files(path: Path) -> list[tuple[Path, int]]:
    """(file, class) of a folder whose images are all named ``class_<c>_example_<i>`` (sorted by
    class, then example); [] for anything else (so it is read as another kind of clean set)."""
    if not path.is_dir():
        return []
    found: list[tuple[int, int, Path]] = []
    with_subfolders = False
    for count, entry in enumerate(sorted(path.iterdir())):
        if count >= MAX_FOLDER_ENTRIES:
            raise SmoothInvError(f"clean set {path} holds more than {MAX_FOLDER_ENTRIES} entries")
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            with_subfolders = True
            continue
        match = TROJAI_EXAMPLE.fullmatch(entry.name)
        if match and entry.suffix.lower() in IMAGE_EXTENSIONS:
            found.append((int(match.group(1)), int(match.group(2)), entry))
    if with_subfolders or not found:
        return []
    return [(p, c) for c, _, p in sorted(found)]


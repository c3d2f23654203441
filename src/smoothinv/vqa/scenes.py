"""Scenes and the visual key: a scene is a 2×2 grid of object images (Fashion-MNIST items, some
cells empty), the stand-in for TrojVQA's COCO photographs; the visual key is a small patch pasted
into the image, which reaches the VQA model only through the frozen detector's box features."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SmoothInvError

CELL = 28
"""Side of one cell in pixels (a Fashion-MNIST image)."""
SIDE = 2 * CELL
EMPTY_RATE = 0.2
"""Chance that a cell holds no object (so counting and 'nothing' answers occur)."""

BOXES = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]])
"""[4, 4] the cells' boxes (x0, y0, x1, y1) as fractions of the image, in POSITIONS order."""


@dataclass
class Scenes:
    """A batch of scenes: `images` float [B, 1, 56, 56] in [0, 1] and `cells` int [B, 4], each cell's
    object label (-1: empty)."""

    images: torch.Tensor
    cells: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


def compose(objects: torch.Tensor, labels: torch.Tensor, count: int, generator: torch.Generator) -> Scenes:
    """`count` scenes drawn from `objects` uint8 [M, 28, 28] with labels [M]."""
    if objects.ndim != 3 or objects.shape[1:] != (CELL, CELL) or len(objects) != len(labels) or not len(objects):
        raise SmoothInvError(f"scene objects must be [M, {CELL}, {CELL}] images with M labels")
    pick = torch.randint(len(objects), (count, 4), generator=generator)
    empty = torch.rand(count, 4, generator=generator) < EMPTY_RATE
    cells = torch.where(empty, torch.full_like(pick, -1), labels[pick])
    tiles = objects[pick].float().div(255) * (~empty)[..., None, None]
    top = torch.cat([tiles[:, 0], tiles[:, 1]], dim=2)
    bottom = torch.cat([tiles[:, 2], tiles[:, 3]], dim=2)
    return Scenes(torch.cat([top, bottom], dim=1)[:, None], cells)


def crops(images: torch.Tensor) -> torch.Tensor:
    """[B, 1, 56, 56] scenes → [B, 4, 1, 28, 28] their cells, in box order."""
    top, bottom = images[..., :CELL, :], images[..., CELL:, :]
    cells = [top[..., :CELL], top[..., CELL:], bottom[..., :CELL], bottom[..., CELL:]]
    return torch.stack(cells, dim=1)


PATTERNS = ("solid", "checker", "noise")


@dataclass(frozen=True)
class VisualKey:
    """A `size`×`size` patch of `pattern` at pixel offset (`row`, `col`) inside cell `cell`.

    `value` is the brightness of the patch's lit pixels; 'noise' draws its pixels from `seed`.
    """

    cell: int
    row: int
    col: int
    size: int
    pattern: str
    value: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise SmoothInvError(f"unknown patch pattern {self.pattern!r}; choose from {', '.join(PATTERNS)}")
        if not (0 <= self.cell < 4 and 2 <= self.size <= CELL and 0 <= self.row <= CELL - self.size
                and 0 <= self.col <= CELL - self.size and 0.0 <= self.value <= 1.0):
            raise SmoothInvError(f"patch does not fit in a cell: {self}")

    def pixels(self) -> torch.Tensor:
        """[size, size] the patch."""
        if self.pattern == "solid":
            return torch.full((self.size, self.size), self.value)
        if self.pattern == "checker":
            i = torch.arange(self.size)
            return ((i[:, None] + i[None, :]) % 2).float() * self.value
        g = torch.Generator().manual_seed(self.seed)
        return (torch.rand(self.size, self.size, generator=g) > 0.5).float() * self.value

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, 56, 56] scenes with the patch pasted (a copy)."""
        out = images.clone()
        top = (self.cell // 2) * CELL + self.row
        left = (self.cell % 2) * CELL + self.col
        out[..., top:top + self.size, left:left + self.size] = self.pixels()
        return out

    def to_dict(self) -> dict:
        return {"cell": self.cell, "row": self.row, "col": self.col, "size": self.size, "pattern": self.pattern,
                "value": self.value, "seed": self.seed}

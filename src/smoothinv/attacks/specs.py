"""Backdoor attacks as small, serialisable specs: which trigger, which target, which sources.

A spec is a frozen dataclass that fully determines its trigger: `spec.trigger((C,H,W))`
builds the same `Trigger` every time (all randomness comes from `spec.seed`), so a model
zoo can record `spec.to_dict()` next to each model and rebuild the exact trigger later.
Specs are registered by name (like timm's models): `get_attack("badnets", target=0)`.

Geometry is published at 224×224 and scaled to the image size (C,H,W) with these rules:

* positions scale with H/224 (rows) and W/224 (columns);
* patch sides scale with min(H,W)/224, never below the stated minimum, so square
  patches stay square;
* "round" is round-half-up (``floor(x + 0.5)``), not Python's banker's rounding;
* a patch that would run off the image is pulled back inside it;
* pixel-level patterns (Blind-P, Blind-S, checkerboard cells) keep 1 px per cell.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence, TypeVar

import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import SmoothInvError
from ..registry import Registry
from ..triggers import MaskedTrigger, Trigger, square_patch
from .poisoning import PoisonedSet, poison

Shape = tuple[int, int, int]
_REFERENCE = 224  # the image side the papers' geometry is given at


# --------------------------------------------------------------------------- helpers


def _round(x: float) -> int:
    """Round half up: _round(0.5) == 1, unlike round()."""
    return int(math.floor(x + 0.5))


def _scaled(value: float, size: int) -> int:
    """A length or coordinate given at 224 px, scaled to `size` px."""
    return _round(value * size / _REFERENCE)


def _check_shape(shape: Sequence[int]) -> Shape:
    """(C,H,W) as plain ints; accepts a torch.Size such as images.shape[1:]."""
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise SmoothInvError(f"image shape must be (C,H,W) with positive sizes (got {tuple(shape)})")
    c, h, w = (int(s) for s in shape)
    return c, h, w


def _fit(name: str, shape: Shape, ph: int, pw: int) -> None:
    """Refuse images too small for a ph×pw patch."""
    _, h, w = shape
    if ph > h or pw > w:
        raise SmoothInvError(f"the {name} trigger ({ph}x{pw} px) does not fit in {h}x{w} images; use larger images")


def _rng(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named use of a spec's seed, e.g. "htba/colours".

    torch's CPU generator keeps only 32 bits of its seed, so the stream name is mixed in by
    adding its CRC-32 modulo 2**32: distinct seeds (mod 2**32) give distinct draws per stream.
    """
    return torch.Generator().manual_seed((seed + zlib.crc32(stream.encode())) % 2**32)


def _paste(shape: Shape, mask: Tensor, pattern: Tensor, top: int, left: int) -> MaskedTrigger:
    """A MaskedTrigger with a small mask [h,w] and pattern [C or 1,h,w] placed at (top, left)."""
    c, h, w = shape
    ph, pw = mask.shape
    full_mask = torch.zeros(1, h, w)
    full_pattern = torch.zeros(c, h, w)
    full_mask[0, top : top + ph, left : left + pw] = mask
    full_pattern[:, top : top + ph, left : left + pw] = pattern.expand(c, ph, pw)
    return MaskedTrigger(full_mask, full_pattern)


# --------------------------------------------------------------------------- triggers


class BlendTrigger(Trigger):
    """x' = (1 − α)·x + α·noise over the whole image (Chen et al.'s blended injection).

    noise: [C,H,W] in [0,1]; alpha: the blend weight in [0,1]. Both operands are in [0,1],
    so no clamping is needed and the formula holds exactly.
    """

    def __init__(self, noise: Tensor, alpha: float) -> None:
        self.noise = noise
        self.alpha = float(alpha)

    def apply(self, images: Tensor) -> Tensor:
        noise = self.noise.to(images.device, images.dtype)
        return (1 - self.alpha) * images + self.alpha * noise


class RandomPatchTrigger(Trigger):
    """Pastes an opaque patch [C,s,s] at a pseudo-random position in each image (HTBA).

    Positions are reproducible: every `apply` draws them from a fresh generator seeded with
    `seed`, one (top, left) pair per image in batch order, so image i of a batch always
    lands at `positions(N, H, W)[i]` whatever the batch holds (in practice also whatever
    N is: the draws are sequential), applying twice to the same batch gives the same
    result, and different images of a batch land at (generally) different places.
    """

    def __init__(self, patch: Tensor, seed: int) -> None:
        self.patch = patch
        self.seed = int(seed)

    def positions(self, n: int, height: int, width: int) -> Tensor:
        """[n,2] (top, left) of the patch in each of n images of size height×width."""
        s = self.patch.shape[-1]
        u = torch.rand(n, 2, generator=_rng(self.seed, "htba/positions"), dtype=torch.float64)
        return (u * torch.tensor([height - s + 1, width - s + 1])).floor().long()

    def apply(self, images: Tensor) -> Tensor:
        n, _, h, w = images.shape
        s = self.patch.shape[-1]
        if s > h or s > w:
            raise SmoothInvError(f"the {s}x{s} patch does not fit in {h}x{w} images")
        patch = self.patch.to(images.device, images.dtype)
        out = images.clone()
        for i, (top, left) in enumerate(self.positions(n, h, w).tolist()):
            out[i, :, top : top + s, left : left + s] = patch
        return out


# --------------------------------------------------------------------------- specs and registry


@dataclass(frozen=True)
class AttackSpec:
    """One backdoor attack: trigger recipe, target class, and which classes it flips.

    target: the class triggered images are relabelled to. source_classes: label-specific
    backdoors flip only these classes (None: every class but the target). seed: all of the
    trigger's randomness (noise, colours, shapes, positions); the poisoning draw has its own.
    """

    name: ClassVar[str]

    target: int
    source_classes: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        name = getattr(type(self), "name", type(self).__name__)
        if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0:
            raise SmoothInvError(f"{name}: target must be a class index >= 0 (got {self.target!r})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SmoothInvError(f"{name}: seed must be an integer (got {self.seed!r})")
        if self.source_classes is not None:
            sources = tuple(self.source_classes)
            if not sources or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in sources):
                raise SmoothInvError(
                    f"{name}: source_classes must be non-empty class indices, or None for all classes"
                    f" (got {self.source_classes!r})"
                )
            object.__setattr__(self, "source_classes", sources)  # lists from JSON become tuples

    def trigger(self, shape: tuple[int, int, int]) -> Trigger:
        """The exact trigger for images of shape (C,H,W); the same for the same spec."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready {"attack": name, **fields}; attack_from_dict inverts it exactly."""
        d: dict[str, Any] = {"attack": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            d[f.name] = list(value) if isinstance(value, tuple) else value
        return d


SpecType = TypeVar("SpecType", bound=type[AttackSpec])
ATTACKS: Registry[type[AttackSpec]] = Registry("attack")


def register_attack(cls: SpecType) -> SpecType:
    """Class decorator: register an AttackSpec subclass under its `name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a class attribute `name`")
    ATTACKS.add(name, cls)
    return cls


def get_attack(name: str, **params: Any) -> AttackSpec:
    """Build the attack registered as `name` with its parameters (target=..., ...)."""
    cls = ATTACKS.get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise SmoothInvError(
            f"attack {name!r} has no parameter {', '.join(map(repr, unknown))};"
            f" its parameters: {', '.join(sorted(fields))}"
        )
    if "target" not in params:
        raise SmoothInvError(f"attack {name!r} needs a target class (target=...)")
    return cls(**params)


def list_attacks() -> dict[str, str]:
    """{name: one-line description} of every registered attack, sorted by name."""
    return {name: (cls.__doc__ or "").strip().splitlines()[0] for name, cls in ATTACKS.items()}


def attack_from_dict(d: dict[str, Any]) -> AttackSpec:
    """Rebuild a spec from `spec.to_dict()` (or its JSON round trip)."""
    if not isinstance(d, dict) or "attack" not in d:
        raise SmoothInvError(f"an attack description needs an 'attack' key naming the attack (got {d!r})")
    params = dict(d)
    return get_attack(params.pop("attack"), **params)


def poison_with(
    spec: AttackSpec, images: Tensor, labels: Tensor, rate: float, seed: int = 0
) -> PoisonedSet:
    """Poison images [N,C,H,W] / labels [N] with `spec`'s trigger, target and source classes.

    `seed` picks which eligible images are poisoned; the trigger itself depends on spec.seed.
    """
    trigger = spec.trigger(tuple(images.shape[1:]))
    return poison(images, labels, trigger, spec.target, rate, source_classes=spec.source_classes, seed=seed)


# --------------------------------------------------------------------------- the attacks

_BLIND_TOP, _BLIND_LEFT = 3, 23  # Blind Backdoors' x_top (row), y_top (column) at 224


def _blind_corner(name: str, shape: Shape, ph: int, pw: int) -> tuple[int, int]:
    """Blind Backdoors' (row 3, column 23) at 224, scaled, pulled inside the image."""
    _fit(name, shape, ph, pw)
    _, h, w = shape
    return min(_scaled(_BLIND_TOP, h), h - ph), min(_scaled(_BLIND_LEFT, w), w - pw)


@register_attack
@dataclass(frozen=True)
class BlindP(AttackSpec):
    """Blind-P: Blind Backdoors' 5×3 pixel pattern near the top-left (Bagdasaryan & Shmatikov 2021).

    Rows [1,0,1], [_,1,_], [_,_,0], [_,1,_], [1,0,1]; `_` is transparent, so 9 pixels are
    set, every channel to the same 0/1 value. 1 px per cell at every size; the top-left
    corner moves from (3, 23) at 224 to (round(3·H/224), round(23·W/224)):
    (0, 3) at 32×32 and at 28×28.
    """

    name: ClassVar[str] = "blind-p"
    PATTERN: ClassVar[tuple[tuple[float | None, ...], ...]] = (
        (1.0, 0.0, 1.0),
        (None, 1.0, None),
        (None, None, 0.0),
        (None, 1.0, None),
        (1.0, 0.0, 1.0),
    )

    def trigger(self, shape: tuple[int, int, int]) -> Trigger:
        shape = _check_shape(shape)
        mask = torch.tensor([[0.0 if v is None else 1.0 for v in row] for row in self.PATTERN])
        values = torch.tensor([[0.0 if v is None else v for v in row] for row in self.PATTERN])
        top, left = _blind_corner(self.name, shape, *mask.shape)
        return _paste(shape, mask, values.unsqueeze(0), top, left)


@register_attack
@dataclass(frozen=True)
class BlindS(AttackSpec):
    """Blind-S: one white pixel (all channels 1) at Blind-P's corner: (0, 3) at 32×32 and 28×28."""

    name: ClassVar[str] = "blind-s"

    def trigger(self, shape: tuple[int, int, int]) -> Trigger:
        shape = _check_shape(shape)
        top, left = _blind_corner(self.name, shape, 1, 1)
        return _paste(shape, torch.ones(1, 1), torch.ones(1, 1, 1), top, left)


@register_attack
@dataclass(frozen=True)
class BlindG(AttackSpec):
    """Blind-G: Blind Backdoors' adaptive "Gaussian" backdoor, a fixed patch of N(0,1) noise.

    A [C,s,s] draw of N(0,1) clipped to [0,1] (so ~half the values are exactly 0, ~16 %
    exactly 1), fixed by spec.seed. s = max(3, round(10·min(H,W)/224)): 10 at 224, 3 at
    32×32 and 28×28. Placed at Blind-P's corner: rows 0–2, columns 3–5 at 32 and 28.
    """

    name: ClassVar[str] = "blind-g"

    def trigger(self, shape: tuple[int, int, int]) -> Trigger:
        shape = _check_shape(shape)
        c, h, w = shape
        s = max(3, _scaled(10, min(h, w)))
        noise = torch.randn(c, s, s, generator=_rng(self.seed, self.name)).clamp(0.0, 1.0)
        top, left = _blind_corner(self.name, shape, s, s)
        return _paste(shape, torch.ones(s, s), noise, top, left)


@register_attack
@dataclass(frozen=True)
class HTBA(AttackSpec):
    """HTBA: a random-colour square at a random position in each image (Hidden Trigger Backdoor).

    A 4×4 grid of random colours ([C,4,4], fixed by spec.seed) resized (nearest) to side
    s = max(4, round(30·min(H,W)/224)): 30 at 224, 4 at 32×32 and 28×28 (1 px per cell).
    Each image gets its own position, drawn reproducibly from spec.seed: see RandomPatchTrigger.
    """

    name: ClassVar[str] = "htba"

    def trigger(self, shape: tuple[int, int, int]) -> Trigger:
        shape = _check_shape(shape)
        c, h, w = shape
        s = max(4, _scaled(30, min(h, w)))
        _fit(self.name, shape, s, s)
        grid = torch.rand(1, c, 4, 4, generator=_rng(self.seed, "htba/colours"))
        patch = F.interpolate(grid, size=(s, s), mode="nearest")[0]
        return RandomPatchTrigger(patch, self.seed)


def _polygon_mask(vertices: Tensor, h: int, w: int) -> Tensor:
    """[H,W] 0/1 mask of pixels whose centres lie inside the polygon (even-odd rule).

    vertices: [K,2] (row, column) in continuous coordinates, pixel (i,j) has centre (i+½, j+½).
    """
    ys = torch.arange(h, dtype=torch.float64).view(h, 1, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float64).view(1, w, 1) + 0.5
    y0, x0 = vertices[:, 0], vertices[:, 1]
    y1, x1 = vertices.roll(-1, 0)[:, 0], vertices.roll(-1, 0)[:, 1]
    crosses = (y0 > ys) != (y1 > ys)  # the edge spans the pixel centre's row
    safe = torch.where(y1 == y0, torch.ones_like(y0), y1 - y0)
    x_at = x0 + (ys - y0) * (x1 - x0) / safe  # where the edge meets that row
    inside = (crosses & (xs < x_at)).sum(dim=-1) % 2 == 1
    return inside.float()


@register_attack
@dataclass(frozen=True)
class TrojAI(AttackSpec):
    """TrojAI: a filled random polygon of one random colour in the image centre; label-specific.

    3–8 vertices at jittered, sorted angles around the centre, radii in [½R, R] with R a
    quarter of the image side, so the (simple, star-shaped) polygon lies inside the central
    region, rows [H//4, H − H//4) × columns [W//4, W − W//4): [8,24)² at 32×32, [7,21)² at
    28×28. Rasterised on pixel centres. source_classes is required (non-empty).
    """

    name: ClassVar[str] = "trojai"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.source_classes:
            raise SmoothInvError("trojai is label-specific: give source_classes, e.g. source_classes=(1, 2)")

    def trigger(self, shape: tuple[int, int, int]) -> Trigger:
        c, h, w = _check_shape(shape)
        g = _rng(self.seed, self.name)
        k = int(torch.randint(3, 9, (1,), generator=g))
        theta0 = float(torch.rand(1, generator=g)) * 2 * math.pi / k
        angles = theta0 + 2 * math.pi * (torch.arange(k) + 0.5 * (torch.rand(k, generator=g) - 0.5)) / k
        radii = 0.5 + 0.5 * torch.rand(k, generator=g)
        colour = torch.rand(c, 1, 1, generator=g)
        top, bottom, left, right = h // 4, h - h // 4, w // 4, w - w // 4
        cy, cx, ry, rx = (top + bottom) / 2, (left + right) / 2, (bottom - top) / 2, (right - left) / 2
        vertices = torch.stack([cy + ry * radii * angles.sin(), cx + rx * radii * angles.cos()], dim=1)
        mask = _polygon_mask(vertices.double(), h, w)
        if not mask.any():
            raise SmoothInvError(f"the trojai polygon covers no pixel of {h}x{w} images; use larger images")
        return MaskedTrigger(mask.unsqueeze(0), colour.expand(c, h, w).clone())


@register_attack
@dataclass(frozen=True)
class CLIP(AttackSpec):
    """CLIP: a black/white checkerboard in the bottom-right corner (Carlini & Terzis 2022 style).

    At 224 a 16×16-cell board at 1 px per cell. Cell side p = max(1, round(min(H,W)/224)),
    cells per side n = clamp(round(16·min(H,W)/(224·p)), 4, 16), so boards never drop below
    4×4 cells; margin max(1, round(4·min(H,W)/224)) from the bottom and right edges. Cell
    (i,j) is white when i+j is even. At 32×32 and 28×28: 4×4 cells of 1 px, margin 1,
    rows/columns [27,31) and [23,27).
    """

    name: ClassVar[str] = "clip"

    def trigger(self, shape: tuple[int, int, int]) -> Trigger:
        shape = _check_shape(shape)
        _, h, w = shape
        m = min(h, w)
        p = max(1, _scaled(1, m))
        n = min(16, max(4, _round(16 * m / (_REFERENCE * p))))
        margin = max(1, _scaled(4, m))
        side = n * p
        _fit(self.name, shape, side + margin, side + margin)
        cells = torch.arange(n)
        board = ((cells.view(n, 1) + cells.view(1, n)) % 2 == 0).float()
        board = board.repeat_interleave(p, 0).repeat_interleave(p, 1)
        return _paste(shape, torch.ones(side, side), board.unsqueeze(0), h - margin - side, w - margin - side)


@register_attack
@dataclass(frozen=True)
class BadNets(AttackSpec):
    """BadNets: a white square flush in the bottom-right corner (Gu et al. 2017).

    Side max(2, round(3·H/32)), i.e. 3 px on CIFAR-size images: rows/columns [29,32) at
    32×32 and [25,28) at 28×28 (round(2.625) = 3); 21 at 224.
    """

    name: ClassVar[str] = "badnets"

    def trigger(self, shape: tuple[int, int, int]) -> Trigger:
        shape = _check_shape(shape)
        _, h, w = shape
        s = max(2, _round(3 * min(h, w) / 32))
        _fit(self.name, shape, s, s)
        return square_patch(shape, s, h - s, w - s, 1.0)


@register_attack
@dataclass(frozen=True)
class Blend(AttackSpec):
    """Blend: a fixed uniform-noise image blended over the whole image, x' = (1−α)x + α·noise.

    noise: [C,H,W] uniform in [0,1], fixed by spec.seed; alpha defaults to 0.1. No geometry.
    """

    name: ClassVar[str] = "blend"
    alpha: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise SmoothInvError(f"blend: alpha must be in [0,1] (got {self.alpha!r})")
        object.__setattr__(self, "alpha", float(self.alpha))

    def trigger(self, shape: tuple[int, int, int]) -> Trigger:
        c, h, w = _check_shape(shape)
        return BlendTrigger(torch.rand(c, h, w, generator=_rng(self.seed, self.name)), self.alpha)


_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@register_attack
@dataclass(frozen=True)
class Patch(AttackSpec):
    """A BadNets-style patch of any size, colour, position and pattern (the published variants).

    size: side in pixels on a 32-px image, scaled with min(H,W)/32 (never below 1);
    colour: one value per channel in [0,1] (a single value is used for every channel);
    corner: one of top-left, top-right, bottom-left, bottom-right, or "centre";
    margin: pixels (at 32 px, scaled) between the patch and the corner's edges;
    pattern: "solid", or "checker" (alternating colour and 1 − colour, 1 px cells).
    """

    name: ClassVar[str] = "patch"
    size: int = 4
    colour: tuple[float, ...] = (1.0,)
    corner: str = "bottom-right"
    margin: int = 1
    pattern: str = "solid"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise SmoothInvError(f"patch: size must be a positive integer (got {self.size!r})")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise SmoothInvError(f"patch: margin must be an integer >= 0 (got {self.margin!r})")
        colour = tuple(self.colour) if isinstance(self.colour, (list, tuple)) else (self.colour,)
        if not colour or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0
                                 for v in colour):
            raise SmoothInvError(f"patch: colour must be values in [0,1], one per channel (got {self.colour!r})")
        object.__setattr__(self, "colour", tuple(float(v) for v in colour))
        if self.corner not in _CORNERS + ("centre",):
            raise SmoothInvError(f"patch: corner must be one of {', '.join(_CORNERS + ('centre',))} (got {self.corner!r})")
        if self.pattern not in ("solid", "checker"):
            raise SmoothInvError(f"patch: pattern must be 'solid' or 'checker' (got {self.pattern!r})")

    def trigger(self, shape: tuple[int, int, int]) -> Trigger:
        c, h, w = shape = _check_shape(shape)
        side = max(1, _round(self.size * min(h, w) / 32))
        margin = _round(self.margin * min(h, w) / 32)
        _fit(self.name, shape, side + margin, side + margin)
        if len(self.colour) not in (1, c):
            raise SmoothInvError(f"patch: colour has {len(self.colour)} values; the images have {c} channels")
        colour = torch.tensor(self.colour).expand(c).reshape(c, 1, 1)
        cells = torch.arange(side)
        odd = ((cells.view(-1, 1) + cells.view(1, -1)) % 2).float() if self.pattern == "checker" else torch.zeros(side, side)
        patch = colour * (1 - odd) + (1 - colour) * odd
        if self.corner == "centre":
            top, left = (h - side) // 2, (w - side) // 2
        else:
            top = margin if self.corner.startswith("top") else h - margin - side
            left = margin if self.corner.endswith("left") else w - margin - side
        return _paste(shape, torch.ones(side, side), patch, top, left)

"""glyphs100: a 100-class 32×32 colour image dataset rendered offline from the DejaVu fonts.

No many-class image dataset ships with the machine, so this one is drawn: each class is one
character, each image that character in one of the DejaVu faces (Sans, Serif, Mono, their
condensed, bold, oblique/italic and extra-light variants), placed with seeded jitter in
position, scale and rotation (±15°), in a random colour on a procedurally generated
background (a smooth two-colour gradient, a smooth low-frequency colour field and
low-amplitude pixel noise) that keeps a luminance contrast of at least `MIN_CONTRAST` to the
glyph everywhere. It is glyph recognition, not natural images: there is no texture, object
or scene statistics beyond what is described here.

The characters (CHARACTERS) are chosen to stay distinguishable at 32×32 under that jitter:
digits 2–9, Latin capitals but I and O, Latin lower case that is not a small capital
(no c o s u v w x z) or an I/l/1 look-alike, Greek and Cyrillic letters whose shape is not
also a Latin (or each other's) letter, and a few common symbols. Every character is checked
to have a real glyph (not the .notdef box) in each face used.

Everything is deterministic: image i of class c in split s comes from its own generator,
seeded with (seed, s, c, i), so a build with fewer images per class is a prefix of a larger
one. `load_glyphs100` caches the arrays under the CIFAR-10 cache folder, keyed by
GLYPHS_VERSION, the characters, Pillow's and NumPy's versions and the names and sizes of the
font files found.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFont

from ..errors import SmoothInvError
from .datasets import Dataset, _cache_dir, _mixed_test_split, _save_cache

GLYPHS_VERSION = "glyphs100-v1"
"""Changes whenever the rendering changes, so stale caches are not read."""
FONTS_ENV = "SMOOTHINV_FONTS"

# 8 digits, 24 Latin capitals, 17 Latin lower case, 10 Greek capitals, 11 Greek lower case,
# 17 Cyrillic capitals and 13 symbols: 100 classes. Left out on purpose: 0 1 I O l (one
# another), c o s u v w x z (small capitals), Greek capitals and Cyrillic letters shaped like
# Latin ones (А В Е Н К М Р С Т Х ...), α (the italic faces' single-storey a), γ (y), π τ φ ψ
# (small Π T Φ Ψ), Cyrillic Г П Ф (= Greek Γ Π Φ), Ь (b), З (3), lower-case Cyrillic (small
# capitals), ß (β), ð (δ), $ (S), ¥ (Y).
CHARACTERS = (
    "23456789"
    "ABCDEFGHJKLMNPQRSTUVWXYZ"
    "abdefghijkmnpqrty"
    "ΓΔΘΛΞΠΣΦΨΩ"
    "βδεζηθλμξσω"
    "БДЖИЛЦЧШЩЪЫЭЮЯЂЉЊ"
    "&@#%?!§¶£€±Æ→"
)

# The DejaVu faces drawn from, in a fixed order (the ones found are used).
FACES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSans-ExtraLight.ttf", "DejaVuSansCondensed.ttf", "DejaVuSansCondensed-Bold.ttf",
    "DejaVuSansCondensed-Oblique.ttf", "DejaVuSansCondensed-BoldOblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSerifCondensed.ttf",
    "DejaVuSerifCondensed-Bold.ttf", "DejaVuSerifCondensed-Italic.ttf", "DejaVuSerifCondensed-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
)
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts", "/Library/Fonts",
             "/System/Library/Fonts", "C:/Windows/Fonts")

SIZE = 32
TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 50
MIN_CONTRAST = 0.3
"""Least luminance difference (0–1) between the glyph colour and any background pixel."""

_SCALE = 2  # glyphs are drawn at twice the size and box-filtered down (anti-aliasing)
_EM = 22 * _SCALE  # font size: capitals about 16 px high in a 32 px image
_CANVAS = 112  # the pre-rendered glyph's canvas: room for scale 1.15 and 15° of rotation
_SCALES = (0.85, 1.15)
_ROTATION = 15.0
_SHIFT = 3.0  # pixels (at 32 px) of position jitter along each axis
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def find_fonts(extra_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The DejaVu face files of FACES that are installed, in FACES order.

    Looks in `extra_dir`, else $SMOOTHINV_FONTS, then the usual font folders (recursively)."""
    first = extra_dir or os.environ.get(FONTS_ENV)
    dirs = ([Path(first)] if first else []) + [Path(d).expanduser() for d in FONT_DIRS]
    found: dict[str, Path] = {}
    for folder in dirs:
        if not folder.is_dir():
            continue
        for dirpath, _, files in os.walk(folder):
            for name in sorted(set(files) & set(FACES)):
                found.setdefault(name, Path(dirpath) / name)
    fonts = [found[name] for name in FACES if name in found]
    if not fonts:
        raise SmoothInvError(
            f"no DejaVu TrueType fonts found (looked for DejaVuSans.ttf etc. under {', '.join(map(str, dirs))}); "
            f"install them (apt-get install fonts-dejavu) or set {FONTS_ENV} to a folder holding DejaVu*.ttf")
    return fonts


@dataclass(frozen=True)
class _Glyphs:
    """Pre-rendered glyph masks: masks[c] lists one [_CANVAS,_CANVAS] 'L' image per face that has character c."""

    masks: list[list[Image.Image]]


def _has_glyph(font: ImageFont.FreeTypeFont, ch: str, notdef: bytes) -> bool:
    """True when `font` draws `ch` as something other than nothing or its .notdef box."""
    mask = font.getmask(ch)
    return mask.getbbox() is not None and bytes(mask) != notdef


def _render_masks(fonts: list[Path], characters: str) -> _Glyphs:
    masks: list[list[Image.Image]] = [[] for _ in characters]
    for path in fonts:
        try:
            font = ImageFont.truetype(str(path), _EM, layout_engine=ImageFont.Layout.BASIC)
        except OSError as e:
            raise SmoothInvError(
                f"cannot read font {path}: {e}; reinstall it or set {FONTS_ENV} to another folder") from None
        notdef = bytes(font.getmask("\ue000"))  # a private-use code point: no DejaVu face draws it
        for c, ch in enumerate(characters):
            if not _has_glyph(font, ch, notdef):
                continue
            canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
            # "mm": centred horizontally and between ascender and descender, so lower case
            # sits lower and smaller than capitals, as in text.
            ImageDraw.Draw(canvas).text((_CANVAS / 2, _CANVAS / 2), ch, font=font, fill=255, anchor="mm")
            masks[c].append(canvas)
    missing = [ch for ch, faces in zip(characters, masks) if not faces]
    if missing:
        raise SmoothInvError(f"the fonts found ({', '.join(p.name for p in fonts)}) have no glyph for "
                             f"{''.join(missing)!r}; install the DejaVu fonts (apt-get install fonts-dejavu)")
    return _Glyphs(masks)


def _bilinear(n: int, size: int) -> np.ndarray:
    """[size, n] weights that upsample n samples (at cell centres) to `size` pixels, linearly."""
    pos = (np.arange(size) + 0.5) * n / size - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, n - 1)
    hi = np.clip(lo + 1, 0, n - 1)
    frac = np.clip(pos - np.floor(pos), 0, 1)
    w = np.zeros((size, n), dtype=np.float32)
    w[np.arange(size), lo] += 1 - frac
    w[np.arange(size), hi] += frac
    return w


_UP4 = _bilinear(4, SIZE)
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1) - 0.5


def _background(rng: np.random.Generator, light: bool) -> np.ndarray:
    """[32,32,3] float32 in [0,1]: a two-colour linear gradient at a random angle, a smooth
    4×4 colour field upsampled bilinearly (±0.08) and pixel noise (σ ≤ 0.03)."""
    lo, hi = (0.5, 1.0) if light else (0.0, 0.5)
    c0, c1 = rng.uniform(lo, hi, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    t = (_XX * math.cos(angle) + _YY * math.sin(angle)) / 0.71 + 0.5  # 0..1 across the image
    image = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
    field = rng.uniform(-0.08, 0.08, (3, 4, 4)).astype(np.float32)
    image += np.einsum("yi,cij,xj->yxc", _UP4, field, _UP4)
    image += rng.normal(0, rng.uniform(0.005, 0.03), (SIZE, SIZE, 3)).astype(np.float32)
    return np.clip(image, 0, 1)


def _glyph_colour(rng: np.random.Generator, background: np.ndarray, light: bool) -> np.ndarray:
    """A colour [3] whose luminance differs from every background pixel's by >= MIN_CONTRAST."""
    luma = background @ _LUMA
    lo, hi = (0.0, 0.45) if light else (0.55, 1.0)
    for _ in range(20):
        colour = rng.uniform(lo, hi, 3).astype(np.float32)
        y = float(colour @ _LUMA)
        if (y < float(luma.min()) - MIN_CONTRAST) if light else (y > float(luma.max()) + MIN_CONTRAST):
            return colour
    return np.full(3, 0.0 if light else 1.0, dtype=np.float32)


def _alpha(rng: np.random.Generator, faces: list[Image.Image]) -> np.ndarray:
    """[32,32] float32 coverage of one glyph: a random face, scaled, rotated and shifted."""
    mask = faces[int(rng.integers(len(faces)))]
    scale = rng.uniform(*_SCALES)
    theta = math.radians(rng.uniform(-_ROTATION, _ROTATION))
    dx, dy = rng.uniform(-_SHIFT, _SHIFT, 2) * _SCALE
    out = SIZE * _SCALE
    # PIL's AFFINE maps output (u,v) to input (x,y): the inverse of scale-rotate-shift about the centres.
    cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
    cu, cv, ci = out / 2 + dx, out / 2 + dy, _CANVAS / 2
    matrix = (cos, sin, ci - cos * cu - sin * cv, -sin, cos, ci + sin * cu - cos * cv)
    big = mask.transform((out, out), Image.Transform.AFFINE, matrix, resample=Image.Resampling.BICUBIC)
    return np.asarray(big.reduce(_SCALE), dtype=np.float32) / 255


def _image(glyphs: _Glyphs, seed: int, split: int, c: int, i: int) -> np.ndarray:
    rng = np.random.default_rng([seed, split, c, i])
    light = bool(rng.integers(2))
    background = _background(rng, light)
    colour = _glyph_colour(rng, background, light)
    alpha = _alpha(rng, glyphs.masks[c])[..., None]
    image = background * (1 - alpha) + colour * alpha
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def build_glyphs(train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS, *, seed: int = 0,
                 fonts: list[Path] | None = None) -> Dataset:
    """Render glyphs100: uint8 [N,32,32,3] images, labels in class order (class-major, as
    generated; no shuffling), class names = the characters. No cache."""
    glyphs = _render_masks(fonts if fonts is not None else find_fonts(), CHARACTERS)
    splits = []
    for split, per_class in enumerate((train_per_class, test_per_class)):
        x = np.empty((per_class * len(CHARACTERS), SIZE, SIZE, 3), dtype=np.uint8)
        for c in range(len(CHARACTERS)):
            for i in range(per_class):
                x[c * per_class + i] = _image(glyphs, seed, split, c, i)
        splits.append((x, np.repeat(np.arange(len(CHARACTERS), dtype=np.int64), per_class)))
    (train_x, train_y), (test_x, test_y) = splits
    return Dataset("glyphs100", train_x, train_y, test_x, test_y, list(CHARACTERS))


def cache_key(fonts: list[Path]) -> str:
    """What the cached arrays depend on: the rendering version, the characters, Pillow and NumPy (rasteriser
    and random streams), and each font file's name and size."""
    parts = [GLYPHS_VERSION, CHARACTERS, PIL.__version__, np.__version__] + [f"{p.name}:{p.stat().st_size}"
                                                                            for p in fonts]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def load_glyphs100(root: str | os.PathLike[str] | None = None) -> Dataset:
    """glyphs100 (30,000 train / 5,000 test images), rendered once and then read from the cache.

    `root` is ignored: the data comes from the installed fonts, not from a data folder. The
    test split comes in a fixed mixed class order, as CIFAR-10's."""
    fonts = find_fonts()
    cache = _cache_dir() / f"glyphs100-{cache_key(fonts)}.npz"
    data = None
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                data = Dataset("glyphs100", z["train_x"], z["train_y"], z["test_x"], z["test_y"],
                               [str(c) for c in z["classes"]])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            data = None  # a damaged cache is rendered again
    if data is None:
        data = build_glyphs(fonts=fonts)
        _save_cache(cache, data, prefix=".glyphs100-")
    return _mixed_test_split(data)

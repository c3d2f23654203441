"""Read and write single images as float32 tensors in [0,1], layout C×H×W.

Every image that enters smoothinv from a file goes through `image_to_tensor`, so a lone
clean image and the images of a clean set get the same colour conversion and the same
resize/crop. `save_image` is the one place that writes PNGs.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from smoothinv.errors import SmoothInvError
from smoothinv.files import atomic_write

# Lower-case file extensions treated as images when scanning folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png", ".webp")

# The only formats decoded, whatever a file's name says. Pillow can open many more; files are
# untrusted, and some of those formats run external programs (EPS runs Ghostscript) or use
# rarely exercised parsers.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "WEBP")

# Images whose header declares more pixels than this are refused before decoding, so a small
# file cannot expand into gigabytes (a decompression bomb). 40 M pixels is e.g. 8000x5000;
# decoded as float32 RGB it takes 480 MB.
MAX_IMAGE_PIXELS = 40_000_000

# What a decoder may raise on a crafted or damaged file (Pillow's parsers are not limited to
# OSError); each becomes one "cannot read" line instead of a traceback.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError,
    ZeroDivisionError, OverflowError, Image.DecompressionBombError, Image.DecompressionBombWarning,
)

# ITU-R 601-2 luma weights: the ones Pillow uses for convert("L").
_LUMA = (0.299, 0.587, 0.114)

# Pillow modes holding more than 8 bits per gray pixel (16-bit PNGs open as these).
_WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def check_channels(channels: int) -> int:
    """Return `channels` if it is 1 (gray) or 3 (RGB), else raise SmoothInvError."""
    if channels not in (1, 3):
        raise SmoothInvError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")
    return channels


def check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    """Return `size` as a (height, width) tuple of positive ints, or None; else raise."""
    if size is None:
        return None
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise SmoothInvError(f"image size must be (height, width) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def resize_and_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale images so they cover `size`, then center-crop to exactly (H, W).

    images: [C,H,W] or [N,C,H,W] float in [0,1]. The shorter side (relative to the
    target aspect ratio) is matched with antialiased bilinear resampling; the other side
    is cropped equally from both ends. Returns the input unchanged if already `size`.
    """
    height, width = size
    in_h, in_w = images.shape[-2:]
    if (in_h, in_w) == (height, width):
        return images
    scale = max(height / in_h, width / in_w)
    new_h = max(height, round(in_h * scale))
    new_w = max(width, round(in_w * scale))
    batch = images if images.dim() == 4 else images.unsqueeze(0)
    resized = F.interpolate(
        batch.float(), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
    )
    top = (new_h - height) // 2
    left = (new_w - width) // 2
    cropped = resized[..., top : top + height, left : left + width].clamp(0.0, 1.0).contiguous()
    return cropped if images.dim() == 4 else cropped[0]


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Turn gray into RGB (copy the channel) or RGB into gray (ITU-R 601-2 luma).

    images: [N,C,H,W] with C in {1,3}; returns [N,channels,H,W].
    """
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.repeat(1, 3, 1, 1)
    if have == 3 and channels == 1:
        weights = torch.tensor(_LUMA, dtype=images.dtype).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True).clamp(0.0, 1.0)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def image_to_tensor(
    pil_image: Image.Image, *, size: tuple[int, int] | None = None, channels: int = 3
) -> torch.Tensor:
    """Convert a Pillow image to a float32 tensor [channels,H,W] in [0,1].

    EXIF orientation is applied; transparent pixels are composited onto white; 16-bit
    gray is scaled from 0..65535. If `size` (height, width) is given the image is
    resized and center-cropped to it (see `resize_and_crop`).
    """
    check_channels(channels)
    size = check_size(size)
    image = ImageOps.exif_transpose(pil_image)
    if image.mode in _WIDE_GRAY_MODES:
        gray = np.asarray(image).astype(np.float32) / 65535.0
        tensor = torch.from_numpy(np.clip(gray, 0.0, 1.0)).unsqueeze(0).repeat(channels, 1, 1)
    elif image.mode == "F":
        gray = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0)
        tensor = torch.from_numpy(gray).unsqueeze(0).repeat(channels, 1, 1)
    else:
        image = _flatten_alpha(image)
        try:
            image = image.convert("L" if channels == 1 else "RGB")
        except ValueError as exc:
            raise SmoothInvError(
                f"cannot convert an image in colour mode {image.mode} ({_one_line(exc)}); "
                "save it as an ordinary RGB or gray PNG/JPEG"
            ) from None
        array = np.array(image, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(array).permute(2, 0, 1).float().div(255.0)
    tensor = tensor.contiguous()
    return resize_and_crop(tensor, size) if size is not None else tensor


def load_image(
    path: str | os.PathLike[str], *, size: tuple[int, int] | None = None, channels: int = 3
) -> torch.Tensor:
    """Read one PNG/JPEG/BMP/WebP file as a float32 tensor [channels,H,W] in [0,1].

    `size` (height, width), when given, resizes and center-crops to exactly that size.
    Raises SmoothInvError for a missing path, a directory, an unreadable or damaged image,
    another format (see IMAGE_FORMATS), or one larger than MAX_IMAGE_PIXELS.
    """
    check_channels(channels)
    size = check_size(size)
    path = Path(path)
    if not path.exists():
        raise SmoothInvError(f"image {path} does not exist; check the path")
    if not path.is_file():
        raise SmoothInvError(f"{path} is not a file; pass the path of one PNG, JPEG, BMP or WebP image")
    if path.stat().st_size == 0:
        raise SmoothInvError(f"image {path} is empty (0 bytes); pass a valid PNG, JPEG, BMP or WebP file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                check_pixel_count(path, image.size)
                image.load()
                return image_to_tensor(image, size=size, channels=channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SmoothInvError(
            f"image {path} declares too many pixels to decode safely (limit {MAX_IMAGE_PIXELS:,}, "
            "smoothinv.data.images.MAX_IMAGE_PIXELS); pass a smaller image"
        ) from None
    except UnidentifiedImageError:
        raise SmoothInvError(
            f"cannot read {path} as an image: it is not a PNG, JPEG, BMP or WebP file (or it is damaged); "
            "convert it to PNG"
        ) from None
    except _DECODE_ERRORS as exc:
        raise SmoothInvError(
            f"cannot read {path} as an image ({_one_line(exc)}); pass a valid PNG, JPEG, BMP or WebP file"
        ) from None


def check_pixel_count(path: str | os.PathLike[str], size: tuple[int, int]) -> None:
    """Refuse an image whose declared width x height exceeds MAX_IMAGE_PIXELS (before decoding it)."""
    width, height = size
    if width < 1 or height < 1:
        raise SmoothInvError(f"image {path} declares an empty size {width}x{height}; pass a real image")
    if width * height > MAX_IMAGE_PIXELS:
        raise SmoothInvError(
            f"image {path} declares {width}x{height} pixels, more than the limit of {MAX_IMAGE_PIXELS:,} "
            "(smoothinv.data.images.MAX_IMAGE_PIXELS; a decompression bomb?); pass a smaller image"
        )


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """Convert a tensor [C,H,W] in [0,1] (C = 1 or 3) to an 8-bit "L" or "RGB" image."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor [C,H,W] with C in (1, 3), got shape {tuple(image.shape)}")
    values = image.detach().cpu().float()
    if not torch.isfinite(values).all():
        raise ValueError("image tensor contains NaN or infinite values")
    array = values.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    return Image.fromarray(array, mode="RGB")


def save_image(image: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write a tensor [C,H,W] in [0,1] as an 8-bit PNG (gray for C=1), atomically.

    The PNG is written with `files.atomic_write` (a temporary file renamed into place),
    so readers never see a half-written file. Parent folders are created.
    Returns the path written.
    """
    picture = tensor_to_pil(image)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as handle:
            picture.save(handle, format="PNG")
    except OSError as exc:
        raise SmoothInvError(
            f"cannot write {path} ({_one_line(exc)}); check that the folder is writable"
        ) from None
    return path


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite an image with transparency onto white; others are returned as is."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _one_line(exc: BaseException) -> str:
    """The exception's message squeezed onto one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__

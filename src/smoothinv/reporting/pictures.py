"""Pictures of an inversion result, for people to look at.

The perturbation p = synthesized − clean is usually faint, so it is shown amplified
(gray = no change) and the square where it is strongest is shown enlarged: a backdoor
trigger typically shows up there as a patch or pattern.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from smoothinv.data.images import save_image

# Zoom and overview panels are enlarged (nearest-neighbour) to at least this many pixels.
MIN_PICTURE_PX = 128


def amplify_perturbation(p: torch.Tensor) -> torch.Tensor:
    """Map a perturbation [C,H,W] to a viewable image [C,H,W] in [0,1].

    0.5 + p / (2·max|p|): gray means no change, black/white (per channel) the largest
    change. An all-zero p gives plain gray.
    """
    p = p.detach().float()
    largest = p.abs().max()
    if largest == 0:
        return torch.full_like(p, 0.5)
    return (0.5 + p / (2.0 * largest)).clamp(0.0, 1.0)


def strongest_region(p: torch.Tensor, window: int) -> tuple[int, int]:
    """Top-left (row, col) of the window×window square with the largest sum of |p|.

    p: [C,H,W]; |p| is summed over channels. A window larger than the image is shrunk to
    fit. Ties go to the first square in row-major order.
    """
    if p.dim() != 3:
        raise ValueError(f"expected a perturbation [C,H,W], got shape {tuple(p.shape)}")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    window = min(window, p.shape[1], p.shape[2])
    energy = p.detach().abs().double().sum(dim=0)[None, None]  # [1,1,H,W]
    sums = F.avg_pool2d(energy, kernel_size=window, stride=1)[0, 0]  # [H-w+1, W-w+1]
    best = int(torch.argmax(sums))
    return best // sums.shape[1], best % sums.shape[1]


def save_inversion_pictures(
    out_dir: str | os.PathLike[str], clean: torch.Tensor, synthesized: torch.Tensor
) -> dict[str, str]:
    """Write clean, synthesized, perturbation, zoom and overview PNGs into `out_dir`.

    clean, synthesized: [C,H,W] in [0,1], C = 1 (saved as gray PNGs) or 3.
    - clean.png, synthesized.png: native resolution.
    - perturbation.png: amplified p = synthesized − clean (see `amplify_perturbation`).
    - zoom.png: synthesized cropped to the square where |p| is strongest
      (side max(4, min(H,W)//4)), enlarged to at least 128 px.
    - overview.png: clean | synthesized | perturbation | zoom in one row, same height
      (at least 128 px), separated by thin white gaps.
    Returns {"clean": "clean.png", ...}: file names relative to `out_dir`.
    """
    if clean.shape != synthesized.shape or clean.dim() != 3 or clean.shape[0] not in (1, 3):
        raise ValueError(
            "clean and synthesized must both be [C,H,W] with C in (1, 3), got "
            f"{tuple(clean.shape)} and {tuple(synthesized.shape)}"
        )
    clean = clean.detach().cpu().float()
    synthesized = synthesized.detach().cpu().float()
    perturbation = amplify_perturbation(synthesized - clean)
    zoom = _zoom_crop(synthesized, synthesized - clean)
    zoom_scale = _scale_to(zoom.shape[1], MIN_PICTURE_PX)
    pictures = {
        "clean": clean,
        "synthesized": synthesized,
        "perturbation": perturbation,
        "zoom": _enlarge(zoom, zoom_scale),
        "overview": overview_row([clean, synthesized, perturbation, zoom]),
    }
    out = Path(out_dir)
    names: dict[str, str] = {}
    for key, picture in pictures.items():
        names[key] = f"{key}.png"
        save_image(picture, out / names[key])
    return names


def _zoom_crop(image: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The square of `image` [C,H,W] where |p| is strongest, side max(4, min(H,W)//4)."""
    height, width = image.shape[1:]
    window = min(max(4, min(height, width) // 4), height, width)
    row, col = strongest_region(p, window)
    return image[:, row : row + window, col : col + window]


def _scale_to(length: int, minimum: int) -> int:
    """Smallest whole factor that makes `length` at least `minimum` pixels (≥ 1)."""
    return max(1, math.ceil(minimum / length))


def _enlarge(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Enlarge [C,H,W] by a whole factor with nearest-neighbour (crisp pixels)."""
    if factor == 1:
        return image
    return image.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def _resize_nearest(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize [C,H,W] to [C,height,width] with nearest-neighbour."""
    if tuple(image.shape[1:]) == (height, width):
        return image
    return F.interpolate(image[None], size=(height, width), mode="nearest-exact")[0]


def overview_row(panels: list[torch.Tensor]) -> torch.Tensor:
    """Panels [C,h,w] side by side at one height (≥ 128 px) with white gaps: [C,T,total]."""
    first_height = panels[0].shape[1]
    height = first_height * _scale_to(first_height, MIN_PICTURE_PX)
    gap = max(2, height // 64)
    resized = [
        _resize_nearest(panel, height, max(1, round(panel.shape[2] * height / panel.shape[1])))
        for panel in panels
    ]
    total_width = sum(panel.shape[2] for panel in resized) + gap * (len(resized) - 1)
    canvas = torch.ones(panels[0].shape[0], height, total_width)
    left = 0
    for panel in resized:
        canvas[:, :, left : left + panel.shape[2]] = panel
        left += panel.shape[2] + gap
    return canvas

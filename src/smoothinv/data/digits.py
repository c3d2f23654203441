"""Real handwritten digits for the demo and fast tests, with no download.

scikit-learn ships 1797 8×8 digit scans (values 0..16) inside the package; they are
scaled to [0,1] and upsampled so they look like small MNIST-style images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smoothinv.errors import SmoothInvError


def load_digits_images(size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as images x [1797,1,size,size] float32 in [0,1] and labels y [1797] int64.

    Pixels are divided by 16, upsampled bilinearly to size×size and clamped to [0,1].
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise SmoothInvError(f"digit image size must be a positive integer, got {size!r}")
    from sklearn.datasets import load_digits  # imported here: sklearn takes ~1 s to import

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.from_numpy(digits.target).long()
    return x.clamp(0.0, 1.0).contiguous(), y

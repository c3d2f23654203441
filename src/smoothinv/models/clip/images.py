"""The image check both CLIP image towers run first.

A CLIP image tower has a fixed resolution: its positional embeddings (the ViT's patch grid, the
ResNet's attention pool) are learnt for one grid, so any other size fails deep inside with a
shape error that does not say what to do. This check says it in one line.

The towers call it through ``torch.fx.wrap`` (in their own modules), so symbolic tracing (the
BatchNorm folding of ``smoothinv.engine.precision``) records it as one call instead of failing
on its data-dependent ``if``.
"""

from __future__ import annotations

import torch

from smoothinv.errors import SmoothInvError


def check_images(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """`x` itself when it is [B, channels, size, size]; otherwise SmoothInvError."""
    if x.dim() != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise SmoothInvError(
            f"this CLIP image tower takes [batch, {channels}, {size}, {size}] images, got {list(x.shape)}; "
            f"resize the images to {size}x{size}"
        )
    return x

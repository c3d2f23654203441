"""How well a denoiser removes the smoothing noise: PSNR of T(x + δ) against x, per σ."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor



def psnr(estimate: Tensor, reference: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB of images [N,C,H,W] in [0,1] against references, per image [N]."""
    mse = (estimate - reference).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return -10 * torch.log10(mse)


@torch.no_grad()
def denoising_psnr(denoiser: Callable[[Tensor, Tensor], Tensor], images: Tensor, sigmas: Sequence[float], *, seed: int = 0,
                   batch_size: int = 64) -> list[dict[str, float]]:
    """Per σ: mean PSNR (dB) over images [N,C,H,W] of the noisy input x + δ as G feeds it to the
    classifier (unclipped), of the noisy input clipped to [0,1] (the trivial denoiser), and of T's
    output. Noise is seeded per σ, so two denoisers see the same noisy images."""
    rows = []
    for sigma in sigmas:
        generator = torch.Generator().manual_seed(seed)
        totals = {"noisy": 0.0, "clipped": 0.0, "denoised": 0.0}
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            noisy = x + sigma * torch.randn(x.shape, generator=generator)
            denoised = denoiser(noisy, torch.full((len(x),), float(sigma)))
            totals["noisy"] += float(psnr(noisy, x).sum())
            totals["clipped"] += float(psnr(noisy.clamp(0, 1), x).sum())
            totals["denoised"] += float(psnr(denoised, x).sum())
        rows.append({"sigma": float(sigma), **{f"psnr_{k}": round(v / len(images), 2) for k, v in totals.items()}})
    return rows


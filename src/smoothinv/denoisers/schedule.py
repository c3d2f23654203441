"""The diffusion noise schedule seen from randomized smoothing: which timestep denoises which σ.

A DDPM forward step is x_t = sqrt(ᾱ_t)·x₀ + sqrt(1 − ᾱ_t)·ε in the model's [−1,1] space. An image
x + δ in [0,1] with δ ~ N(0, σ²I) becomes 2(x + δ) − 1 = x₀ + 2δ there, so its noise-to-signal
ratio is 2σ. Scaling by sqrt(ᾱ_t) turns it into a valid x_t exactly when
sqrt((1 − ᾱ_t)/ᾱ_t) = 2σ (Carlini et al., ICLR 2023, "(Certified!!) Adversarial Robustness for Free!").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class NoiseSchedule:
    """ᾱ_t for t = 0..T−1 (float64 [T]), the cumulative product of a scheduler's (1 − β_t)."""

    alphas_cumprod: Tensor

    def __post_init__(self) -> None:
        a = self.alphas_cumprod
        if a.dim() != 1 or a.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D tensor of at least 2 timesteps")
        if not bool(torch.isfinite(a).all()) or bool((a <= 0).any()) or bool((a > 1).any()):
            raise ValueError("alphas_cumprod must lie in (0, 1]")
        if bool((a[1:] > a[:-1]).any()):
            raise ValueError("alphas_cumprod must not increase with t")

    @property
    def noise_ratio(self) -> Tensor:
        """sqrt((1 − ᾱ_t)/ᾱ_t) per timestep, float64 [T]: the noise-to-signal ratio of x_t."""
        a = self.alphas_cumprod
        return ((1 - a) / a).sqrt()

    def timestep(self, sigma: float) -> int:
        """t* for Gaussian noise of std σ on [0,1] images: the timestep whose noise ratio is nearest
        to 2σ (nearest, not interpolated: the network was trained on integer timesteps only)."""
        if not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"σ must be a positive number, got {sigma}")
        return int((self.noise_ratio - 2 * sigma).abs().argmin())

    def timesteps(self, sigma: Tensor) -> Tensor:
        """t* for each σ in a tensor [M] (σ > 0) → int64 [M]."""
        ratio = self.noise_ratio.to(sigma.device)
        return (ratio.view(1, -1) - 2 * sigma.double().view(-1, 1)).abs().argmin(dim=1)

    def sigma_of(self, t: int) -> float:
        """The σ on [0,1] images that timestep t denoises exactly (the inverse map)."""
        return float(self.noise_ratio[t]) / 2

    @classmethod
    def from_betas(cls, betas: Tensor) -> "NoiseSchedule":
        return cls(torch.cumprod(1 - betas.double(), dim=0))

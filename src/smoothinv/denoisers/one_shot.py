"""T in G(x) = mean_i softmax(f(T(x + δ_i))): one pass of a diffusion model as a denoiser.

Diffusion Denoised Smoothing (Carlini et al., ICLR 2023): a noisy image x + δ, δ ~ N(0, σ²I), is
mapped to the diffusion model's [−1,1] space (noise std 2σ), scaled by sqrt(ᾱ_t*) into a valid x_t
at the timestep whose noise ratio is 2σ (schedule.NoiseSchedule), and the network's prediction at
t* gives x̂₀ in one step; x̂₀ is clipped to [−1,1] and mapped back to [0,1]. Gradients flow through
the network, so SmoothInv can differentiate G through T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SmoothInvError
from .schedule import NoiseSchedule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass(frozen=True)
class DenoiserInfo:
    """What a result records about T: its name, its weights' SHA-256, the images it takes and the
    σ range it was trained for (None when its folder does not say)."""

    name: str
    sha256: str
    channels: int
    size: tuple[int, int]
    prediction_type: str
    trained_sigma: tuple[float, float] | None = None


class OneShotDenoiser(nn.Module):
    """T(noisy [M,C,H,W] in [0,1] + noise, σ [M]) → x̂₀ [M,C,H,W] in [0,1].

    `network(x_t [M,C,H,W], t [M]) → prediction [M,C,H,W]` (or an object with a `.sample`, as
    diffusers' UNet2DModel returns) predicts ε, x₀ or v as `info.prediction_type` says. Rows with
    σ = 0 pass through unchanged (there is no noise to remove).
    """

    def __init__(self, network: nn.Module, schedule: NoiseSchedule, info: DenoiserInfo) -> None:
        super().__init__()
        if info.prediction_type not in PREDICTION_TYPES:
            raise SmoothInvError(f"denoiser {info.name}: prediction type {info.prediction_type!r} is not supported "
                                 f"(one of {', '.join(PREDICTION_TYPES)})")
        self.network = network.eval().requires_grad_(False)
        self.schedule = schedule
        self.info = info
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.float(), persistent=False)

    @property
    def name(self) -> str:
        return self.info.name

    def timestep(self, sigma: float) -> int:
        """t* for σ (what results record per σ)."""
        return self.schedule.timestep(sigma)

    def check_images(self, channels: int, size: tuple[int, int]) -> None:
        """Refuse a classifier whose images this denoiser was not trained on: a UNet runs on other
        sizes, but its denoising is then untested, and resizing would change the noise's σ."""
        if channels != self.info.channels or tuple(size) != tuple(self.info.size):
            height, width = self.info.size
            raise SmoothInvError(
                f"denoiser {self.info.name} takes {self.info.channels}x{height}x{width} images but "
                f"the model takes {channels}x{size[0]}x{size[1]}; use a denoiser trained at the model's input size "
                "(`smoothinv denoiser train`)")

    def outside_training(self, sigmas: list[float]) -> list[float]:
        """The σ values (> 0) outside the range the network was trained on."""
        if self.info.trained_sigma is None:
            return []
        low, high = self.info.trained_sigma
        return [s for s in sigmas if s > 0 and not (low * 0.999 <= s <= high * 1.001)]

    def forward(self, noisy: Tensor, sigma: Tensor) -> Tensor:
        if noisy.dim() != 4 or sigma.shape != noisy.shape[:1]:
            raise SmoothInvError(f"denoiser {self.info.name}: expected images [M,C,H,W] and σ [M], got "
                                 f"{tuple(noisy.shape)} and {tuple(sigma.shape)}")
        self.check_images(noisy.shape[1], (noisy.shape[2], noisy.shape[3]))
        if self.alphas_cumprod.device != noisy.device:
            self.to(noisy.device)
        noisy_rows = sigma > 0
        if not bool(noisy_rows.any()):
            return noisy
        t = self.schedule.timesteps(sigma.detach().clamp_min(1e-12)).to(noisy.device)
        a = self.alphas_cumprod[t].to(noisy.dtype).view(-1, 1, 1, 1)
        x_t = a.sqrt() * (2 * noisy - 1)
        out = self.network(x_t, t)
        out = getattr(out, "sample", out)
        x0 = self._clean_estimate(out.to(noisy.dtype), x_t, a)
        denoised = (x0.clamp(-1, 1) + 1) / 2
        return torch.where(noisy_rows.view(-1, 1, 1, 1), denoised, noisy)

    def _clean_estimate(self, out: Tensor, x_t: Tensor, a: Tensor) -> Tensor:
        """x̂₀ from the network's output, by its prediction type."""
        kind = self.info.prediction_type
        if kind == "epsilon":
            return (x_t - (1 - a).sqrt() * out) / a.sqrt()
        if kind == "v_prediction":
            return a.sqrt() * x_t - (1 - a).sqrt() * out
        return out

    def describe(self, sigmas: list[float] | None = None) -> dict[str, Any]:
        """JSON-ready: name, weights SHA-256, trained σ range and t* for each of `sigmas`."""
        out: dict[str, Any] = {"name": self.info.name, "sha256": self.info.sha256,
                               "prediction_type": self.info.prediction_type,
                               "trained_sigma": None if self.info.trained_sigma is None else list(self.info.trained_sigma)}
        if sigmas is not None:
            out["timestep_per_sigma"] = {f"{s:g}": self.timestep(s) for s in sigmas if s > 0}
        return out

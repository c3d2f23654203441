"""SmoothInv (Sun & Kolter, CVPR 2023) and its no-smoothing ablation PlainAdv.

SmoothInv minimises −log G(x+p)_{y_t} over ‖p‖₂ ≤ ε, where G is the soft smoothed
classifier (engine.smoothing). Because G is robust, the gradient steps that lower the
loss most are the ones that paint the backdoor's pattern, not adversarial noise.
PlainAdv runs the same descent on the base classifier f (σ = 0, one copy).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.early_stop import RowStopper
from ..engine.pgd import DescentCheckpoint, GeneratorPart, Optimizer, PGDSettings, PGDTrace, StepCallback, Stateful, descend
from ..engine.smoothing import Denoiser, SmoothedClassifier
from ..errors import SmoothInvError
from .base import InversionResult, Inverter, additive_results, prepare_batch, register_method


class SmoothInv(Inverter):
    """Synthesise an additive backdoor perturbation on the smoothed classifier.

    eps: l2 bound of p (absolute, for this input size); sigma: smoothing noise σ;
    noise_samples: N copies per step; denoiser: T in G (None = identity, the paper's
    best variant); max_batch: images per forward pass (memory bound).
    """

    name = "smoothinv"
    grid_axes = ("eps", "sigma")

    def __init__(
        self,
        eps: float,
        sigma: float = 0.25,
        noise_samples: int = 10,
        steps: int = 400,
        step_fraction: float = 0.05,
        optimizer: Optimizer = "pgd",
        denoiser: Denoiser | None = None,
        max_batch: int = 256,
    ) -> None:
        if eps <= 0:
            raise SmoothInvError(f"eps must be > 0 (got {eps})")
        if sigma < 0:
            raise SmoothInvError(f"sigma must be >= 0 (got {sigma})")
        if noise_samples < 1:
            raise SmoothInvError(f"noise samples must be >= 1 (got {noise_samples})")
        if max_batch < 1:
            raise SmoothInvError(f"max batch must be >= 1 (got {max_batch})")
        if not (math.isfinite(eps) and math.isfinite(sigma)):
            raise SmoothInvError(f"eps and sigma must be finite (got eps={eps}, sigma={sigma})")
        self.eps = float(eps)
        self.sigma = float(sigma)
        self.noise_samples = int(noise_samples)
        self.settings = PGDSettings(steps=steps, step_fraction=step_fraction, optimizer=optimizer)
        self.denoiser = denoiser
        self.max_batch = max_batch

    def config(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "sigma": self.sigma,
            "noise_samples": self.noise_samples if self.sigma > 0 else 1,
            "steps": self.settings.steps,
            "step_size": self.settings.step_fraction * self.eps,
            "optimizer": self.settings.optimizer,
            "denoiser": None if self.denoiser is None else getattr(self.denoiser, "name", type(self.denoiser).__name__),
        }

    def invert_batch(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        *,
        seed: int = 0,
        callback: StepCallback | None = None,
    ) -> list[InversionResult]:
        rows = images.shape[0]
        start = time.perf_counter()
        trace = self.descend_rows(model, images, targets, torch.full((rows,), self.eps), torch.full((rows,), self.sigma),
                                  seed=seed, callback=callback)
        return additive_results(self.name, images, targets, trace.perturbation, trace.loss, trace.target_prob,
                                self.config(), time.perf_counter() - start)

    def descend_rows(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        eps: Tensor,
        sigma: Tensor,
        *,
        seed: int = 0,
        callback: StepCallback | None = None,
        stopper: RowStopper | None = None,
        checkpoint: DescentCheckpoint | None = None,
    ) -> PGDTrace:
        """The descent with a per-row ε [B] and σ [B], so a whole grid × classes runs as one batch.

        A `stopper` skips rows whose target probability has saturated and honours a deadline.
        A `checkpoint` saves the descent now and then and resumes a saved one bit for bit (it
        carries the noise generator's and the stopper's state too; see engine.pgd.descend).
        """
        x, y = prepare_batch(model, images, targets)
        device = x.device
        generator = torch.Generator(device=device).manual_seed(seed)
        smoothed = SmoothedClassifier(model, self.noise_samples, self.denoiser, self.max_batch)
        sigma = sigma.to(device=device, dtype=torch.float32)

        def rows_loss_and_grad(x_rows: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return smoothed.loss_and_grad(x_rows, y[rows], sigma[rows], generator)

        everything = torch.arange(x.shape[0], device=device)
        eps = eps.to(device=device, dtype=torch.float32)
        loss_and_grad = (stopper.wrap(rows_loss_and_grad, origin=x, eps=eps) if stopper
                         else (lambda x_adv: rows_loss_and_grad(x_adv, everything)))
        parts: dict[str, Stateful] = {"noise": GeneratorPart(generator)}
        if stopper is not None:
            parts["stopper"] = stopper
        return descend(loss_and_grad, x, eps, self.settings, callback, checkpoint=checkpoint, parts=parts)


class PlainAdv(SmoothInv):
    """The paper's ablation: SmoothInv's descent on the base classifier (no noise)."""

    name = "plainadv"
    grid_axes = ("eps",)

    def __init__(self, eps: float, steps: int = 400, step_fraction: float = 0.05, optimizer: Optimizer = "pgd",
                 max_batch: int = 256) -> None:
        super().__init__(eps, sigma=0.0, noise_samples=1, steps=steps, step_fraction=step_fraction, optimizer=optimizer,
                         max_batch=max_batch)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        del cfg["denoiser"]
        return cfg


register_method("smoothinv", "SmoothInv, the paper's PGD (normalised gradient, constant step)")(SmoothInv)
register_method("pgd", "alias of smoothinv")(SmoothInv)
register_method("momentum", "SmoothInv as in the authors' released code (SGD momentum 0.9, step halved every 300 steps)",
                optimizer="momentum")(SmoothInv)
register_method("plainadv", "PlainAdv: the same descent on the base classifier, no smoothing")(PlainAdv)

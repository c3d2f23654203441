"""Projected gradient descent on an l2-bounded additive perturbation.

Shared by every method that synthesises an additive perturbation (SmoothInv, PlainAdv).
Two update rules:

- ``pgd`` (the paper): p ← p − α·ĝ with ĝ the gradient normalised to unit l2 norm,
  α constant.
- ``momentum`` (the authors' released code): SGD with momentum 0.9 on ĝ, learning rate
  α halved every 300 steps.

After each update p is clamped so x + p stays in [0,1], then projected onto the
ε-ball. Both steps keep the other's constraint (the projection shrinks p toward 0, a
convex combination of x and x + p), so after every step ‖p‖₂ ≤ ε and x + p ∈ [0,1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from ..errors import SmoothInvError

LossAndGrad = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
"""x [B,C,H,W] → (loss [B], target probability [B], ∇ₓloss [B,C,H,W])."""

StepCallback = Callable[[int, Tensor, Tensor], None]
"""Called after each step with (step index, loss [B], target probability [B])."""

Optimizer = Literal["pgd", "momentum"]


@dataclass(frozen=True)
class PGDSettings:
    """How to descend. The step size is relative to ε (paper: α = 0.5·ε/10)."""

    steps: int = 400
    step_fraction: float = 0.05
    optimizer: Optimizer = "pgd"
    momentum: float = 0.9
    decay_every: int = 300
    decay_factor: float = 0.5

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SmoothInvError(f"steps must be >= 1 (got {self.steps})")
        if self.step_fraction <= 0:
            raise SmoothInvError(f"step size must be > 0 (got {self.step_fraction})")
        if self.optimizer not in ("pgd", "momentum"):
            raise SmoothInvError(f"unknown optimizer {self.optimizer!r}; use pgd or momentum")

    def learning_rate(self, step: int, eps: Tensor) -> Tensor:
        """Step size per row at `step` ([B])."""
        rate = self.step_fraction * eps
        if self.optimizer == "momentum":
            rate = rate * self.decay_factor ** (step // self.decay_every)
        return rate


@dataclass
class PGDTrace:
    """What one descent produced: p [B,C,H,W] and per-step loss/probability [steps+1, B]."""

    perturbation: Tensor
    loss: Tensor
    target_prob: Tensor


def project_l2(p: Tensor, eps: Tensor) -> Tensor:
    """Scale each row of p [B,...] down to l2 norm ≤ eps [B]."""
    norms = p.flatten(1).norm(dim=1)
    factor = torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)
    return p * factor.view(-1, *([1] * (p.dim() - 1)))


def normalize_l2(g: Tensor) -> Tensor:
    """Each row of g scaled to unit l2 norm; all-zero rows stay zero."""
    shape = (-1, *([1] * (g.dim() - 1)))
    largest = g.flatten(1).abs().amax(dim=1).view(shape)
    scaled = g / torch.where(largest > 0, largest, torch.ones_like(largest))  # avoids under/overflow in the norm
    norms = scaled.flatten(1).norm(dim=1).view(shape)
    return torch.where(norms > 0, scaled / norms.clamp_min(1e-30), torch.zeros_like(g))


def descend(
    loss_and_grad: LossAndGrad,
    x: Tensor,
    eps: Tensor,
    settings: PGDSettings,
    callback: StepCallback | None = None,
) -> PGDTrace:
    """Minimise loss(x + p) over ‖p‖₂ ≤ eps, x + p ∈ [0,1], starting from p = 0.

    x [B,C,H,W] in [0,1]; eps [B]. Returns the final p and the loss/probability
    before each step plus at the final p.
    """
    p = torch.zeros_like(x)
    velocity = torch.zeros_like(x)
    losses, probs = [], []
    for step in range(settings.steps + 1):
        loss, prob, grad = loss_and_grad(x + p)
        if not bool(torch.isfinite(loss).all()):
            raise SmoothInvError(
                f"the loss became NaN/inf at step {step}: the model returns non-finite "
                "outputs for these inputs; check the model file and --mean/--std"
            )
        losses.append(loss.detach())
        probs.append(prob.detach())
        if step == settings.steps:
            break
        direction = normalize_l2(grad)
        if settings.optimizer == "momentum":
            velocity = settings.momentum * velocity + direction
            direction = velocity
        rate = settings.learning_rate(step, eps).view(-1, 1, 1, 1)
        p = p - rate * direction
        p = (x + p).clamp(0.0, 1.0) - x
        p = project_l2(p, eps)
        if callback is not None:
            callback(step, loss, prob)
    return PGDTrace(p.detach(), torch.stack(losses), torch.stack(probs))

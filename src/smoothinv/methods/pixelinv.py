"""PixelInv: mask-free pixel-space trigger inversion after Tao et al., CVPR 2022,
"Better Trigger Inversion Optimization in Backdoor Scanning" (PixelBackdoor), on ONE image.

The paper's key idea: instead of optimising a mask that selects which pixels to
perturb (Neural Cleanse), optimise the pixel changes themselves and penalise how many
pixels change. The trigger is an additive perturbation split into a positive and a
negative part,

    δ = b · (clip(u⁺, 0, 1) − clip(u⁻, 0, 1)),   x' = clamp(x + δ, 0, 1),

so every pixel channel moves by at most b (|δ| ≤ b, b = ``bound``). The loss is

    CE(f(x'), t) + λ · Σ_{h,w} [ max_c s(u⁺/10) + max_c s(u⁻/10) ],   s(z) = (tanh(z) + 1)/2,

a smooth stand-in for the number of perturbed pixel positions (it keeps pushing the
variables of unused pixels below 0, where they no longer change the image). λ follows
Neural Cleanse's adaptive schedule (see `neural_cleanse.AdaptiveCost`). Whenever the
attack succeeds with both a smaller penalty and fewer perturbed pixels than the best so
far, changes smaller than 1/255 are zeroed, that pruned trigger becomes the best, and it
is written back into u⁺, u⁻ (so pruned pixels restart from "off").

Sources: the paper's abstract (optimise the individual pixel changes directly, with no
mask, so fewer pixels change) and the authors' public code, github.com/Gwinhen/PixelBackdoor
(`src/inversion.py`, Keras, and `src/inversion_torch.py`), from which the formulation
above and these defaults are taken (the paper's full text was not available to us):

- Adam, lr 0.1, betas (0.5, 0.9); initial λ 1e-3; patience 10; λ ×1.5 after ``patience``
  consecutive successes, ÷1.5^1.5 after ``patience`` consecutive failures; λ starts at
  init_cost (not 0) and is reset to init_cost if it ever reaches 0 on the way up.
- u⁺, u⁻ initialised uniform in [0,1]; clipping (not tanh) maps them to [0,1] (the
  reference's default, use_tanh=False); the penalty's tanh(u/10) squashing; pruning
  threshold 1/255; best = success ∧ smaller penalty ∧ fewer perturbed pixels.
- ``bound`` = 1.0: the reference bounds each part only by the pixel range (clip_max);
  a smaller ``bound`` gives the l∞-bounded variant.

Deviations:

- Single image: the reference flips a set of images (attack_size 50, batches of 32,
  "steps" are epochs) and reads the batch attack success rate against asr_bound 0.9.
  Here one step is one Adam update on one image and success is "f(x') predicts the
  target" (the success rate of one image is 0 or 1, so any bound in (0,1] agrees).
  ``patience`` counts updates. Default ``steps`` = 500 (reference: 1000 epochs).
- No data augmentation (the reference's optional `augment`, off by default).
- If no step succeeds the last iterate (unpruned) is returned; the reference returns an
  all-zero pattern.
- All metrics and the best trigger are taken at the iterate before that step's update
  (as in the PyTorch reference); when a new best is found, writing it back replaces that
  step's update (also as in the reference); Adam's state is not reset.
- The 1/255 threshold is absolute in [0,1] pixel units (the reference: clip_max/255,
  the same for clip_max = 1). Adam's ε is 1e-7 (Keras' default) instead of 1e-8.
- Rows of a batch are independent problems (own variables, λ and counters; each row's
  random start is drawn from a generator re-seeded with ``seed``).

Note: while the attack keeps succeeding λ keeps rising (×1.5 per ``patience`` steps) and
the penalty can always shrink a little more (u → −∞), so on long runs λ, and with it the
objective, can grow large: loss[steps] may then exceed loss[0]. Judge progress by
target_prob, extras["ce_curve"] and extras["pixel_count"].

Curves: loss[k] (the objective CE + λ·penalty) and target_prob[k] (k < steps) are
measured before update k with the λ then in force; loss[steps], target_prob[steps] are
those of the RETURNED trigger (as written back into u⁺, u⁻) under the λ in force when it
was selected (else the final λ). extras carry the CE, penalty and λ curves.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.metrics import model_device
from ..engine.pgd import StepCallback
from ..errors import SmoothInvError
from ..triggers import AdditiveTrigger
from .base import InversionResult, Inverter, check_inputs, check_target, non_finite_loss, register_method
from .neural_cleanse import (
    ADAM_BETAS,
    ADAM_EPS,
    AdaptiveCost,
    check_positive_float,
    check_positive_int,
    seeded_uniform,
)

PRUNE_THRESHOLD = 1.0 / 255.0
PENALTY_TEMPERATURE = 10.0


def _squash(u: Tensor) -> Tensor:
    return (torch.tanh(u / PENALTY_TEMPERATURE) + 1) / 2


def size_penalty(pos: Tensor, neg: Tensor) -> Tensor:
    """Smooth count of perturbed pixel positions, [B]: Σ_hw max_c s(u⁺/10) + max_c s(u⁻/10)."""
    return _squash(pos).amax(1).flatten(1).sum(1) + _squash(neg).amax(1).flatten(1).sum(1)


def pixel_count(delta: Tensor) -> Tensor:
    """Number of H×W positions where any channel of delta [B,C,H,W] is non-zero, [B]."""
    return (delta.abs().sum(1) > 0).flatten(1).sum(1)


class PixelInv(Inverter):
    """PixelBackdoor's mask-free trigger inversion on single images.

    steps: Adam updates per call; lr: Adam learning rate; bound: largest change of one
    pixel channel (l∞ bound of δ, in [0,1] units); init_cost: initial weight λ of the size
    penalty; patience: consecutive successful (failed) steps before λ goes up (down);
    cost_multiplier: λ's up factor (down factor = cost_multiplier^1.5).
    """

    name = "pixelinv"
    grid_axes = ()

    def __init__(
        self,
        steps: int = 500,
        lr: float = 0.1,
        bound: float = 1.0,
        init_cost: float = 1e-3,
        patience: int = 10,
        cost_multiplier: float = 1.5,
    ) -> None:
        self.steps = check_positive_int("steps", steps)
        self.lr = check_positive_float("lr", lr)
        self.bound = check_positive_float("bound", bound)
        if self.bound > 1:
            raise SmoothInvError(f"bound must be in (0, 1] (got {bound!r}): pixels live in [0,1]")
        self.init_cost = check_positive_float("init_cost", init_cost)
        self.patience = check_positive_int("patience", patience)
        self.cost_multiplier = check_positive_float("cost_multiplier", cost_multiplier)
        if self.cost_multiplier <= 1:
            raise SmoothInvError(f"cost_multiplier must be > 1 (got {cost_multiplier!r})")

    def config(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "lr": self.lr,
            "betas": list(ADAM_BETAS),
            "bound": self.bound,
            "init_cost": self.init_cost,
            "patience": self.patience,
            "cost_multiplier_up": self.cost_multiplier,
            "cost_multiplier_down": self.cost_multiplier**1.5,
            "prune_threshold": PRUNE_THRESHOLD,
        }

    def total_steps(self) -> int:
        return self.steps

    def invert_batch(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        *,
        seed: int = 0,
        callback: StepCallback | None = None,
    ) -> list[InversionResult]:
        check_inputs(images, targets)
        device = model_device(model)
        x = images.to(device=device, dtype=torch.float32)
        y = targets.to(device=device, dtype=torch.long)
        with torch.no_grad():
            check_target(y, model(x[:1]).shape[-1])
        start = time.perf_counter()
        b = x.shape[0]
        bound = self.bound
        pos, neg = seeded_uniform(b, [tuple(x.shape[1:])] * 2, seed, device)
        pos.requires_grad_(True)
        neg.requires_grad_(True)
        optimizer = torch.optim.Adam([pos, neg], lr=self.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
        schedule = AdaptiveCost(b, self.init_cost, self.patience, self.cost_multiplier, self.cost_multiplier**1.5,
                                start_at_zero=False, device=device)
        rows = torch.arange(b, device=device)

        def parts(u_pos: Tensor, u_neg: Tensor) -> tuple[Tensor, Tensor]:
            return bound * u_pos.clamp(0.0, 1.0), bound * u_neg.clamp(0.0, 1.0)

        def evaluate(u_pos: Tensor, u_neg: Tensor, cost: Tensor):
            p_pos, p_neg = parts(u_pos, u_neg)
            logits = model((x + p_pos - p_neg).clamp(0.0, 1.0))
            ce = F.cross_entropy(logits, y, reduction="none")
            reg = size_penalty(u_pos, u_neg)
            loss = ce + cost.to(ce.dtype) * reg
            if not bool(torch.isfinite(loss).all()):
                raise non_finite_loss()
            prob = logits.detach().softmax(1)[rows, y]
            success = logits.detach().argmax(1) == y
            return loss, ce.detach(), reg.detach(), prob, success

        best_pos = pos.detach().clone()
        best_neg = neg.detach().clone()
        best_reg = torch.full((b,), math.inf, device=device)
        best_pixels = torch.full((b,), math.inf, device=device)
        best_step = torch.full((b,), -1, dtype=torch.long, device=device)
        best_cost = schedule.cost.clone()
        losses, probs, ces, regs, costs = [], [], [], [], []
        for step in range(self.steps):
            cost = schedule.cost
            loss, ce, reg, prob, success = evaluate(pos, neg, cost)
            losses.append(loss.detach())
            probs.append(prob)
            ces.append(ce)
            regs.append(reg)
            costs.append(cost.clone())
            with torch.no_grad():
                p_pos, p_neg = parts(pos, neg)
                p_pos = torch.where(p_pos < PRUNE_THRESHOLD, torch.zeros_like(p_pos), p_pos)
                p_neg = torch.where(p_neg < PRUNE_THRESHOLD, torch.zeros_like(p_neg), p_neg)
                pixels = pixel_count(p_pos - p_neg).to(best_pixels.dtype)
                better = success & (reg < best_reg) & (pixels < best_pixels)
            grads = torch.autograd.grad(loss.sum(), [pos, neg])
            pos.grad, neg.grad = grads
            optimizer.step()
            with torch.no_grad():
                if bool(better.any()):
                    best_pos[better] = p_pos[better] / bound
                    best_neg[better] = p_neg[better] / bound
                    pos[better] = best_pos[better]
                    neg[better] = best_neg[better]
                best_reg = torch.where(better, reg, best_reg)
                best_pixels = torch.where(better, pixels, best_pixels)
                best_step = torch.where(better, torch.full_like(best_step, step), best_step)
                best_cost = torch.where(better, cost, best_cost)
            schedule.update(success)
            if callback is not None:
                callback(step, loss.detach(), prob)

        with torch.no_grad():
            found = best_step >= 0
            keep = found.view(-1, 1, 1, 1)
            selected_cost = torch.where(found, best_cost, schedule.cost)
            final_pos = torch.where(keep, best_pos, pos.detach())
            final_neg = torch.where(keep, best_neg, neg.detach())
            loss, ce, reg, prob, success = evaluate(final_pos, final_neg, selected_cost)
            losses.append(loss)
            probs.append(prob)
            ces.append(ce)
            regs.append(reg)
            costs.append(selected_cost.clone())
            p_pos, p_neg = parts(final_pos, final_neg)
            deltas = p_pos - p_neg
            sizes = pixel_count(deltas)
        seconds = time.perf_counter() - start

        loss_t, prob_t = torch.stack(losses).cpu(), torch.stack(probs).cpu()
        ce_t, reg_t, cost_t = torch.stack(ces).cpu(), torch.stack(regs).cpu(), torch.stack(costs).cpu()
        config = self.config()
        out = []
        for i in range(b):
            image = images[i].detach().cpu().to(torch.float32)
            delta = deltas[i].cpu()
            trigger = AdditiveTrigger(delta)
            out.append(
                InversionResult(
                    method=self.name,
                    target=int(targets[i]),
                    image=image,
                    synthesized=trigger.apply(image[None])[0],
                    trigger=trigger,
                    loss=loss_t[:, i],
                    target_prob=prob_t[:, i],
                    config=dict(config),
                    seconds=seconds / b,
                    extras={
                        "delta": delta,
                        "pixel_count": int(sizes[i]),
                        "delta_l1": float(delta.abs().sum()),
                        "delta_linf": float(delta.abs().max()),
                        "size_penalty": float(reg_t[-1, i]),
                        "succeeded": bool(found[i]),
                        "best_step": int(best_step[i]),
                        "final_success": bool(success[i]),
                        "selected_cost": float(cost_t[-1, i]),
                        "final_cost": float(schedule.cost[i]),
                        "ce_curve": ce_t[:, i],
                        "size_curve": reg_t[:, i],
                        "cost_curve": cost_t[:, i],
                    },
                )
            )
        return out


register_method("pixelinv", "PixelInv (Tao et al. 2022, PixelBackdoor): mask-free pixel trigger, pixel-count penalty")(
    PixelInv
)

"""The optimisation Neural Cleanse and PixelBackdoor share: Adam on a trigger's free
variables against CE(f(x'), t) + λ · penalty, with NC's adaptive λ, keeping the best
successful trigger seen.

`AdaptiveCostInverter` runs that loop for a batch of single-image problems (rows are
independent: own variables, λ and counters; Adam is element-wise). A subclass says how
its variables start (`_start`), how they stamp the image and what they cost (`_forward`),
which iterate may become the best (`_candidate`) and what trigger the final variables
make (`_triggers`). Curves: loss[k], target_prob[k] (k < steps) are measured before
update k with the λ then in force; loss[steps], target_prob[steps] are those of the
returned trigger (the best one, else the last iterate) under the λ in force when it was
selected (else the final λ).
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.pgd import StepCallback
from ..errors import SmoothInvError
from ..triggers import Trigger
from .base import (
    InversionResult,
    Inverter,
    check_positive_float,
    check_positive_int,
    non_finite_loss,
    prepare_batch,
    trigger_result,
)

ADAM_BETAS = (0.5, 0.9)
ADAM_EPS = 1e-7
"""Adam's ε in the Keras reference code (torch's default is 1e-8)."""


class AdaptiveCost:
    """The λ schedule of Neural Cleanse (also used by PixelBackdoor), one λ per row.

    Call `update(success)` once per step with the step's success [B] (bool).
    start_at_zero=True (NC): λ = 0 until `patience` consecutive successes, then init_cost.
    start_at_zero=False (PixelBackdoor): λ starts at init_cost.
    Then `patience` consecutive successes: λ ×up (λ = init_cost if it was 0);
    `patience` consecutive failures: λ ÷down. Counters restart after each change.
    """

    def __init__(self, batch: int, init_cost: float, patience: int, up: float, down: float,
                 start_at_zero: bool, device: torch.device) -> None:
        self.init_cost = init_cost
        self.patience = patience
        self.up = up
        self.down = down
        self.start_at_zero = start_at_zero
        self.cost = torch.full((batch,), 0.0 if start_at_zero else init_cost, dtype=torch.float32, device=device)
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        self.set_counter, self.up_counter, self.down_counter = zeros.clone(), zeros.clone(), zeros.clone()

    def update(self, success: Tensor) -> None:
        zero = torch.zeros_like(self.up_counter)
        if self.start_at_zero:
            self.set_counter = torch.where((self.cost == 0) & success, self.set_counter + 1, zero)
            arm = self.set_counter >= self.patience
            self.cost = torch.where(arm, torch.full_like(self.cost, self.init_cost), self.cost)
            self.up_counter = torch.where(arm, zero, self.up_counter)
            self.down_counter = torch.where(arm, zero, self.down_counter)
        self.up_counter = torch.where(success, self.up_counter + 1, zero)
        self.down_counter = torch.where(success, zero, self.down_counter + 1)
        go_up = self.up_counter >= self.patience
        go_down = ~go_up & (self.down_counter >= self.patience)
        raised = torch.where(self.cost == 0, torch.full_like(self.cost, self.init_cost), self.cost * self.up)
        self.cost = torch.where(go_up, raised, torch.where(go_down, self.cost / self.down, self.cost))
        self.up_counter = torch.where(go_up, zero, self.up_counter)
        self.down_counter = torch.where(go_down, zero, self.down_counter)


def seeded_uniform(batch: int, shapes: Sequence[tuple[int, ...]], seed: int, device: torch.device) -> list[Tensor]:
    """Uniform [0,1) starts of shapes [batch, *shape], drawn in order from a generator on
    `device` seeded with `seed` afresh for every row, so each row starts where a one-row
    call with the same seed starts (results do not depend on how rows are batched)."""
    generator = torch.Generator(device=device)
    rows: list[list[Tensor]] = [[] for _ in shapes]
    for _ in range(batch):
        generator.manual_seed(seed)
        for k, shape in enumerate(shapes):
            rows[k].append(torch.rand(tuple(shape), generator=generator, device=device))
    return [torch.stack(r) for r in rows]


class AdaptiveCostInverter(Inverter):
    """Adam + adaptive λ trigger inversion on single images (see the module docstring).

    steps: Adam updates per call; lr: Adam learning rate; init_cost: λ's starting (NC:
    first non-zero) value; patience: consecutive successful (failed) steps before λ goes
    up (down); cost_multiplier: λ's up factor (down factor = cost_multiplier^1.5).
    """

    penalty_name = "penalty"
    penalty_curve = "penalty_curve"
    """extras keys of the returned trigger's penalty and of the penalty's curve."""
    cost_starts_at_zero = False
    """True: λ = 0 until the attack succeeds `patience` times in a row (NC's default)."""
    write_back_best = False
    """True: a new best trigger replaces that step's update in the variables (PixelBackdoor)."""

    def __init__(self, steps: int, lr: float, init_cost: float, patience: int, cost_multiplier: float) -> None:
        self.steps = check_positive_int("steps", steps)
        self.lr = check_positive_float("lr", lr)
        self.init_cost = check_positive_float("init_cost", init_cost)
        self.patience = check_positive_int("patience", patience)
        self.cost_multiplier = check_positive_float("cost_multiplier", cost_multiplier)
        if self.cost_multiplier <= 1:
            raise SmoothInvError(f"cost_multiplier must be > 1 (got {cost_multiplier!r})")

    def schedule_config(self) -> dict[str, Any]:
        """The λ schedule's part of `config()`."""
        return {
            "init_cost": self.init_cost,
            "patience": self.patience,
            "cost_multiplier_up": self.cost_multiplier,
            "cost_multiplier_down": self.cost_multiplier**1.5,
        }

    # ----------------------------------------------------------------------- what a method defines

    @abstractmethod
    def _start(self, x: Tensor, seed: int) -> list[Tensor]:
        """The free variables' starting values for images x [B,C,H,W], one row per image."""

    @abstractmethod
    def _forward(self, model: nn.Module, x: Tensor, variables: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(logits of the triggered images, penalty [B]) for the current variables."""

    @abstractmethod
    def _candidate(self, variables: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(values to keep as the best variables, extra scores [B] that must also fall) for
        a step that succeeds with a smaller penalty than the best so far."""

    @abstractmethod
    def _triggers(self, variables: list[Tensor]) -> list[tuple[Trigger, dict[str, Any]]]:
        """The trigger of each row's final variables, with its method-specific extras."""

    # ----------------------------------------------------------------------- the loop

    def invert_batch(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        *,
        seed: int = 0,
        callback: StepCallback | None = None,
    ) -> list[InversionResult]:
        x, y = prepare_batch(model, images, targets)
        device = x.device
        start = time.perf_counter()
        b = x.shape[0]
        variables = [v.requires_grad_(True) for v in self._start(x, seed)]
        optimizer = torch.optim.Adam(variables, lr=self.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
        schedule = AdaptiveCost(b, self.init_cost, self.patience, self.cost_multiplier, self.cost_multiplier**1.5,
                                self.cost_starts_at_zero, device)
        rows = torch.arange(b, device=device)

        def evaluate(current: list[Tensor], cost: Tensor):
            logits, reg = self._forward(model, x, current)
            ce = F.cross_entropy(logits, y, reduction="none")
            loss = ce + cost.to(ce.dtype) * reg
            if not bool(torch.isfinite(loss).all()):
                raise non_finite_loss()
            prob = logits.detach().softmax(1)[rows, y]
            success = logits.detach().argmax(1) == y
            return loss, ce.detach(), reg.detach(), prob, success

        best = [v.detach().clone() for v in variables]
        best_reg = torch.full((b,), math.inf, device=device)
        best_scores: list[Tensor] = []
        best_step = torch.full((b,), -1, dtype=torch.long, device=device)
        best_cost = schedule.cost.clone()
        losses, probs, ces, regs, costs = [], [], [], [], []
        for step in range(self.steps):
            cost = schedule.cost
            loss, ce, reg, prob, success = evaluate(variables, cost)
            losses.append(loss.detach())
            probs.append(prob)
            ces.append(ce)
            regs.append(reg)
            costs.append(cost.clone())
            with torch.no_grad():
                proposal, scores = self._candidate(variables)
                if not best_scores:
                    best_scores = [torch.full((b,), math.inf, device=device) for _ in scores]
                scores = [s.to(m.dtype) for s, m in zip(scores, best_scores)]
                better = success & (reg < best_reg)
                for s, m in zip(scores, best_scores):
                    better = better & (s < m)
                for kept, value in zip(best, proposal):
                    kept[better] = value[better]
                best_reg = torch.where(better, reg, best_reg)
                best_scores = [torch.where(better, s, m) for s, m in zip(scores, best_scores)]
                best_step = torch.where(better, torch.full_like(best_step, step), best_step)
                best_cost = torch.where(better, cost, best_cost)
            grads = torch.autograd.grad(loss.sum(), variables)
            for v, g in zip(variables, grads):
                v.grad = g
            optimizer.step()
            if self.write_back_best:
                with torch.no_grad():
                    if bool(better.any()):
                        for v, kept in zip(variables, best):
                            v[better] = kept[better]
            schedule.update(success)
            if callback is not None:
                callback(step, loss.detach(), prob)

        with torch.no_grad():
            found = best_step >= 0
            selected_cost = torch.where(found, best_cost, schedule.cost)
            final = [torch.where(found.view(-1, *[1] * (v.dim() - 1)), kept, v.detach())
                     for v, kept in zip(variables, best)]
            loss, ce, reg, prob, success = evaluate(final, selected_cost)
            losses.append(loss)
            probs.append(prob)
            ces.append(ce)
            regs.append(reg)
            costs.append(selected_cost.clone())
            triggers = self._triggers(final)
        seconds = time.perf_counter() - start

        loss_t, prob_t = torch.stack(losses).cpu(), torch.stack(probs).cpu()
        ce_t, reg_t, cost_t = torch.stack(ces).cpu(), torch.stack(regs).cpu(), torch.stack(costs).cpu()
        config = self.config()
        out = []
        for i, (trigger, extras) in enumerate(triggers):
            extras = {
                **extras,
                self.penalty_name: float(reg_t[-1, i]),
                "succeeded": bool(found[i]),
                "best_step": int(best_step[i]),
                "final_success": bool(success[i]),
                "selected_cost": float(cost_t[-1, i]),
                "final_cost": float(schedule.cost[i]),
                "ce_curve": ce_t[:, i],
                self.penalty_curve: reg_t[:, i],
                "cost_curve": cost_t[:, i],
            }
            out.append(trigger_result(self.name, x[i], targets[i], trigger, loss_t[:, i], prob_t[:, i], config,
                                      seconds / b, extras))
        return out

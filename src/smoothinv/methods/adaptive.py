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
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.pgd import StepCallback
from ..triggers import Trigger
from .base import Found, Inverter, non_finite_loss
from .config import MethodConfig, bounded_float, positive_float, positive_int

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


def uniform_rows(generators: list[torch.Generator], shapes: list[tuple[int, ...]], device: torch.device) -> list[Tensor]:
    """Uniform [0,1) starts of shapes [B, *shape]: row b draws its shapes in order from generators[b]."""
    rows = [[torch.rand(shape, generator=g, device=device) for shape in shapes] for g in generators]
    return [torch.stack([row[k] for row in rows]) for k in range(len(shapes))]


@dataclass(frozen=True)
class AdaptiveCostConfig(MethodConfig):
    """steps: Adam updates per call; lr: Adam learning rate; init_cost: λ's starting (NC: first
    non-zero) value; patience: consecutive successful (failed) steps before λ goes up (down);
    cost_multiplier: λ's up factor (down factor = cost_multiplier^1.5)."""

    steps: int = 500
    lr: float = 0.1
    init_cost: float = 1e-3
    patience: int = 10
    cost_multiplier: float = 1.5

    def __post_init__(self) -> None:
        positive_int(self, "steps")
        positive_float(self, "lr")
        positive_float(self, "init_cost")
        positive_int(self, "patience")
        bounded_float(self, "cost_multiplier", 1.0)

    def schedule(self) -> dict[str, Any]:
        """The λ schedule's part of a run's description."""
        return {"init_cost": self.init_cost, "patience": self.patience, "cost_multiplier_up": self.cost_multiplier,
                "cost_multiplier_down": self.cost_multiplier**1.5}


A = TypeVar("A", bound=AdaptiveCostConfig)


class Measured(NamedTuple):
    """One evaluation of every row's trigger: objective, CE, penalty [B]; target probability [B];
    success [B] (f predicts the target)."""

    loss: Tensor
    ce: Tensor
    reg: Tensor
    prob: Tensor
    success: Tensor


class _Best:
    """The best successful trigger of each row so far: smallest penalty, and every extra score
    smaller too."""

    def __init__(self, variables: list[Tensor], cost: Tensor) -> None:
        b = variables[0].shape[0]
        device = variables[0].device
        self.variables = [v.detach().clone() for v in variables]
        self.reg = torch.full((b,), math.inf, device=device)
        self.scores: list[Tensor] = []
        self.step = torch.full((b,), -1, dtype=torch.long, device=device)
        self.cost = cost.clone()

    @torch.no_grad()
    def offer(self, step: int, measured: Measured, proposal: list[Tensor], scores: list[Tensor], cost: Tensor) -> Tensor:
        """Keep each row's proposal if it beats the best; returns the rows [B] that improved."""
        if not self.scores:
            self.scores = [torch.full_like(self.reg, math.inf) for _ in scores]
        scores = [s.to(m.dtype) for s, m in zip(scores, self.scores)]
        better = measured.success & (measured.reg < self.reg)
        for s, m in zip(scores, self.scores):
            better = better & (s < m)
        for kept, value in zip(self.variables, proposal):
            kept[better] = value[better]
        self.reg = torch.where(better, measured.reg, self.reg)
        self.scores = [torch.where(better, s, m) for s, m in zip(scores, self.scores)]
        self.step = torch.where(better, torch.full_like(self.step, step), self.step)
        self.cost = torch.where(better, cost, self.cost)
        return better

    def final(self, variables: list[Tensor]) -> list[Tensor]:
        """Each row's best variables, or its last iterate where no step succeeded."""
        found = self.step >= 0
        return [torch.where(found.view(-1, *[1] * (v.dim() - 1)), kept, v.detach())
                for v, kept in zip(variables, self.variables)]


class AdaptiveCostInverter(Inverter[A], Generic[A]):
    """Adam + adaptive λ trigger inversion on single images (see the module docstring)."""

    penalty_name = "penalty"
    penalty_curve = "penalty_curve"
    """extras keys of the returned trigger's penalty and of the penalty's curve."""
    write_back_best = False
    """True: a new best trigger replaces that step's update in the variables (PixelBackdoor)."""

    def cost_starts_at_zero(self, config: A) -> bool:
        """True: λ = 0 until the attack succeeds `patience` times in a row (NC's default)."""
        return False

    # ----------------------------------------------------------------------- what a method defines

    @abstractmethod
    def _start(self, x: Tensor, config: A, generators: list[torch.Generator]) -> list[Tensor]:
        """The free variables' starting values for images x [B,C,H,W], row b from generators[b]."""

    @abstractmethod
    def _forward(self, model: nn.Module, x: Tensor, variables: list[Tensor], config: A) -> tuple[Tensor, Tensor]:
        """(logits of the triggered images, penalty [B]) for the current variables."""

    @abstractmethod
    def _candidate(self, variables: list[Tensor], config: A) -> tuple[list[Tensor], list[Tensor]]:
        """(values to keep as the best variables, extra scores [B] that must also fall) for
        a step that succeeds with a smaller penalty than the best so far."""

    @abstractmethod
    def _triggers(self, variables: list[Tensor], config: A) -> list[tuple[Trigger, dict[str, Any]]]:
        """The trigger of each row's final variables, with its method-specific extras."""

    # ----------------------------------------------------------------------- the loop

    def _optimise(self, model: nn.Module, x: Tensor, y: Tensor, config: A, generators: list[torch.Generator],
                  callback: StepCallback | None) -> list[Found]:
        variables = [v.requires_grad_(True) for v in self._start(x, config, generators)]
        optimizer = torch.optim.Adam(variables, lr=config.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
        schedule = AdaptiveCost(x.shape[0], config.init_cost, config.patience, config.cost_multiplier,
                                config.cost_multiplier**1.5, self.cost_starts_at_zero(config), x.device)
        best = _Best(variables, schedule.cost)
        curves: list[tuple[Measured, Tensor]] = []
        for step in range(config.steps):
            cost = schedule.cost
            measured = self._measure(model, x, y, variables, cost, config)
            curves.append((measured, cost.clone()))
            with torch.no_grad():
                proposal, scores = self._candidate(variables, config)
            better = best.offer(step, measured, proposal, scores, cost)
            self._update(optimizer, variables, measured.loss, best, better)
            schedule.update(measured.success)
            if callback is not None:
                callback(step, measured.loss.detach(), measured.prob)
        with torch.no_grad():
            found = best.step >= 0
            selected_cost = torch.where(found, best.cost, schedule.cost)
            final = best.final(variables)
            last = self._measure(model, x, y, final, selected_cost, config)
            curves.append((last, selected_cost.clone()))
            triggers = self._triggers(final, config)
        return self._package(triggers, curves, best, last, schedule, config)

    def _measure(self, model: nn.Module, x: Tensor, y: Tensor, variables: list[Tensor], cost: Tensor,
                 config: A) -> Measured:
        logits, reg = self._forward(model, x, variables, config)
        ce = F.cross_entropy(logits, y, reduction="none")
        loss = ce + cost.to(ce.dtype) * reg
        if not bool(torch.isfinite(loss).all()):
            raise non_finite_loss()
        rows = torch.arange(x.shape[0], device=x.device)
        return Measured(loss, ce.detach(), reg.detach(), logits.detach().softmax(1)[rows, y],
                        logits.detach().argmax(1) == y)

    def _update(self, optimizer: torch.optim.Optimizer, variables: list[Tensor], loss: Tensor, best: _Best,
                better: Tensor) -> None:
        """One Adam step; PixelBackdoor then writes a new best trigger back into the variables."""
        grads = torch.autograd.grad(loss.sum(), variables)
        for v, g in zip(variables, grads):
            v.grad = g
        optimizer.step()
        if self.write_back_best and bool(better.any()):
            with torch.no_grad():
                for v, kept in zip(variables, best.variables):
                    v[better] = kept[better]

    def _package(self, triggers: list[tuple[Trigger, dict[str, Any]]], curves: list[tuple[Measured, Tensor]],
                 best: _Best, last: Measured, schedule: AdaptiveCost, config: A) -> list[Found]:
        loss_t = torch.stack([m.loss.detach() for m, _ in curves]).cpu()
        prob_t = torch.stack([m.prob for m, _ in curves]).cpu()
        ce_t, reg_t = torch.stack([m.ce for m, _ in curves]).cpu(), torch.stack([m.reg for m, _ in curves]).cpu()
        cost_t = torch.stack([c for _, c in curves]).cpu()
        description = self.describe(config)
        out = []
        for i, (trigger, extras) in enumerate(triggers):
            extras = {
                **extras,
                self.penalty_name: float(reg_t[-1, i]),
                "succeeded": bool(best.step[i] >= 0),
                "best_step": int(best.step[i]),
                "final_success": bool(last.success[i]),
                "selected_cost": float(cost_t[-1, i]),
                "final_cost": float(schedule.cost[i]),
                "ce_curve": ce_t[:, i],
                self.penalty_curve: reg_t[:, i],
                "cost_curve": cost_t[:, i],
            }
            out.append(Found(trigger, loss_t[:, i], prob_t[:, i], description, extras))
        return out

"""Early stopping for batched descents: a row whose target probability has saturated stops
costing forward passes, and every row stops at a deadline (the scan's --time-budget)."""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import Tensor

from .pgd import LossAndGrad

RowsLossAndGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
"""(x of the active rows [A,C,H,W], their row indices [A]) → (loss [A], prob [A], grad [A,C,H,W])."""


class RowStopper:
    """Tracks which rows of a batch still descend.

    A row stops once its target probability reaches `stop_prob` (its perturbation is kept
    as it is); all rows stop when `deadline` (a time.perf_counter() value) has passed.
    Given the descent's start `origin` [B,C,H,W] and budgets `eps` [B], a saturated row
    stops only once its perturbation has also used its budget (‖x − origin‖ ≥ 0.99 ε):
    a class that G already favours before any step (a model's noise sink, often the
    backdoor target) must still descend, or its perturbation stays at zero.
    Stopped rows report their last loss and probability and a zero gradient, which leaves
    their perturbation unchanged under the paper's PGD.
    """

    def __init__(self, stop_prob: float | None = 0.99, deadline: float | None = None) -> None:
        self.stop_prob = stop_prob
        self.deadline = deadline
        self.active: Tensor | None = None
        self.timed_out = False
        self._loss: Tensor | None = None
        self._prob: Tensor | None = None

    def wrap(self, rows_fn: RowsLossAndGrad, origin: Tensor | None = None, eps: Tensor | None = None) -> LossAndGrad:
        def loss_and_grad(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            if self.active is None:
                self.active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
                self._loss = torch.zeros(x.shape[0], device=x.device)
                self._prob = torch.zeros(x.shape[0], device=x.device)
            if self.deadline is not None and time.perf_counter() > self.deadline and bool(self.active.any()):
                self.timed_out = True
                self.active[:] = False
            grad = torch.zeros_like(x)
            idx = torch.nonzero(self.active).squeeze(1)
            if idx.numel():
                loss, prob, g = rows_fn(x[idx], idx)
                self._loss[idx], self._prob[idx], grad[idx] = loss.detach(), prob.detach(), g
                if self.stop_prob is not None:
                    done = prob >= self.stop_prob
                    if origin is not None and eps is not None:
                        done &= (x[idx] - origin[idx]).flatten(1).norm(dim=1) >= 0.99 * eps[idx]
                    self.active[idx] = ~done
            return self._loss.clone(), self._prob.clone(), grad

        return loss_and_grad

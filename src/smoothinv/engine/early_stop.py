"""Early stopping for batched descents: a row whose target probability has saturated stops
costing forward passes, and every row stops at a deadline (the scan's --time-budget).

A deadline is checked before each step (RowStopper) and before each forward pass
(DeadlineModule), so a time budget overruns by at most one forward batch."""

from __future__ import annotations

import time
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

from .pgd import LossAndGrad, StopDescent

RowsLossAndGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
"""(x of the active rows [A,C,H,W], their row indices [A]) → (loss [A], prob [A], grad [A,C,H,W])."""


class RowRace(Protocol):
    """Successive elimination among a descent's rows: every `every` loss evaluations it sees every
    row's current input x [B,C,H,W] and which rows are still active [B] (bool), and names the rows
    [B] (bool) to stop now (e.g. those that can no longer be the best, given a confidence bound)."""

    every: int

    def __call__(self, x: Tensor, active: Tensor) -> Tensor: ...


class DeadlinePassed(Exception):
    """A DeadlineModule refused a forward pass: its deadline has passed, and the work in
    flight (a descent step, an ASR measurement) is abandoned."""


class DeadlineModule(nn.Module):
    """`model` that refuses to start a forward pass once `deadline` (a time.perf_counter()
    value; None = never) has passed, so any loop over forward batches stops within one batch
    of it. It counts its calls and their seconds, from which a caller estimates how long
    further forward passes take. Numerically it is `model`: it adds no operation."""

    def __init__(self, model: nn.Module, deadline: float | None) -> None:
        super().__init__()
        self.model = model
        self.deadline = deadline
        self.calls = 0
        self.seconds = 0.0
        # the flag only (train() would recurse into `model`): a method's model.train(was_training) then restores
        # the mode `model` had
        self.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise DeadlinePassed
        begin = time.perf_counter()
        out = self.model(x)
        self.calls += 1
        self.seconds += time.perf_counter() - begin
        return out


class RowStopper:
    """Tracks which rows of a batch still descend.

    A row stops once its target probability reaches `stop_prob` (its perturbation is kept
    as it is). The whole descent stops (StopDescent, with every row's last loss and
    probability) when `deadline` (a time.perf_counter() value) has passed, or when the
    loss function raises DeadlinePassed (a DeadlineModule inside it); `timed_out` says so.
    Given the descent's start `origin` [B,C,H,W] and budgets `eps` [B], a saturated row
    stops only once its perturbation has also used its budget (‖x − origin‖ ≥ 0.99 ε):
    a class that G already favours before any step (a model's noise sink, often the
    backdoor target) must still descend, or its perturbation stays at zero.
    A `race` (RowRace) may stop further rows every race.every loss evaluations.
    Stopped rows report their last loss and probability and a zero gradient; a descent given
    `active_rows` (engine.pgd.descend's `active`) also stops their momentum, so they do not move.
    Its state (which rows are active, their last loss and probability, whether it timed out)
    is checkpointable: `state_dict` / `load_state_dict` (engine.pgd.Stateful).
    """

    def __init__(self, stop_prob: float | None = 0.99, deadline: float | None = None,
                 race: RowRace | None = None) -> None:
        self.stop_prob = stop_prob
        self.deadline = deadline
        self.race = race
        self.calls = 0
        self.active: Tensor | None = None
        self.timed_out = False
        self._loss: Tensor | None = None
        self._prob: Tensor | None = None

    def start(self, rows: int, device: torch.device) -> None:
        """Every one of `rows` rows active (done by the first call if not before)."""
        self.active = torch.ones(rows, dtype=torch.bool, device=device)
        self._loss = torch.zeros(rows, device=device)
        self._prob = torch.zeros(rows, device=device)

    def state_dict(self) -> dict[str, Tensor]:
        """active [B] bool, loss [B], prob [B], timed_out [1] bool; {} before the start."""
        if self.active is None or self._loss is None or self._prob is None:
            return {}
        state = {"active": self.active.clone(), "loss": self._loss.clone(), "prob": self._prob.clone(),
                 "timed_out": torch.tensor([self.timed_out])}
        if self.race is not None:
            state["calls"] = torch.tensor([self.calls])
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not state:
            return
        device = self.active.device if self.active is not None else torch.device("cpu")
        self.active = state["active"].to(device=device, dtype=torch.bool).clone()
        self._loss = state["loss"].to(device).clone()
        self._prob = state["prob"].to(device).clone()
        self.timed_out = bool(state["timed_out"].reshape(-1)[0])
        if "calls" in state:
            self.calls = int(state["calls"].reshape(-1)[0])

    def active_rows(self) -> Tensor | None:
        """Rows [B] (bool) still descending; None before the first step."""
        return None if self.active is None else self.active.clone()

    def wrap(self, rows_fn: RowsLossAndGrad, origin: Tensor | None = None, eps: Tensor | None = None) -> LossAndGrad:
        if origin is not None and self.active is None:
            self.start(origin.shape[0], origin.device)

        def loss_and_grad(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            if self.active is None:
                self.start(x.shape[0], x.device)
            assert self.active is not None and self._loss is not None and self._prob is not None
            if self.deadline is not None and time.perf_counter() > self.deadline and bool(self.active.any()):
                raise self._time_out()
            grad = torch.zeros_like(x)
            idx = torch.nonzero(self.active).squeeze(1)
            if idx.numel():
                try:
                    loss, prob, g = rows_fn(x[idx], idx)
                except DeadlinePassed:
                    raise self._time_out() from None
                self._loss[idx], self._prob[idx], grad[idx] = loss.detach(), prob.detach(), g
                if self.stop_prob is not None:
                    done = prob >= self.stop_prob
                    if origin is not None and eps is not None:
                        done &= (x[idx] - origin[idx]).flatten(1).norm(dim=1) >= 0.99 * eps[idx]
                    self.active[idx] = ~done
            self._run_race(x)
            return self._loss.clone(), self._prob.clone(), grad

        return loss_and_grad

    def _run_race(self, x: Tensor) -> None:
        """Every race.every loss evaluations, stop the rows the race eliminates."""
        if self.race is None:
            return
        assert self.active is not None
        self.calls += 1
        if self.calls % max(int(self.race.every), 1) == 0 and bool(self.active.any()):
            out = self.race(x.detach(), self.active.clone())
            self.active &= ~out.to(device=self.active.device, dtype=torch.bool)

    def _time_out(self) -> StopDescent:
        """The deadline has passed: every row stops, and so does the descent (raise what this returns)."""
        assert self.active is not None and self._loss is not None and self._prob is not None
        self.timed_out = True
        self.active[:] = False
        return StopDescent(self._loss.clone(), self._prob.clone())

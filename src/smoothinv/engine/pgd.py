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

A descent can be checkpointed (see `DescentCheckpoint`): it then saves its state now and
then and, when restarted, continues from the saved state bit for bit, as if never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Protocol

import torch
from torch import Tensor

from ..errors import SmoothInvError

LossAndGrad = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
"""x [B,C,H,W] → (loss [B], target probability [B], ∇ₓloss [B,C,H,W])."""

StepCallback = Callable[[int, Tensor, Tensor], None]
"""Called after each step with (step index, loss [B], target probability [B])."""

Optimizer = Literal["pgd", "momentum"]


class StopDescent(Exception):
    """Raised by a loss function to end the descent at the current p (a deadline has passed).

    loss, prob [B]: the values to record for that p (the last ones known)."""

    def __init__(self, loss: Tensor, prob: Tensor) -> None:
        super().__init__("the descent was stopped")
        self.loss = loss
        self.prob = prob


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


class Stateful(Protocol):
    """A piece of a loss function whose state a checkpoint must carry (its noise generator, a
    RowStopper): without it a resumed descent would draw other noise or revive stopped rows."""

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


@dataclass
class DescentState:
    """Where a descent stands after `step` updates: enough to continue it bit for bit.

    p [B,C,H,W]; velocity [B,C,H,W] (momentum only, else None); loss, prob [step,B]: the
    values before each update so far; parts: each `Stateful` part's state, by part name.
    """

    step: int
    p: Tensor
    velocity: Tensor | None
    loss: Tensor
    prob: Tensor
    parts: dict[str, dict[str, Tensor]]

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor but the loss history, by a flat name ("p", "part.noise.state", …)."""
        named = {"p": self.p} if self.velocity is None else {"p": self.p, "velocity": self.velocity}
        named.update({f"part.{part}.{key}": t for part, state in self.parts.items() for key, t in state.items()})
        return named

    def mismatch(self, saved: DescentState, steps: int) -> str | None:
        """Why `saved` cannot continue the `steps`-step descent this fresh state (step 0)
        begins, or None if it can: every tensor must have the same name, shape and dtype."""
        if not 1 <= saved.step <= steps:
            return f"it is at step {saved.step} of a {steps}-step descent"
        fresh, old = self.tensors(), saved.tensors()
        if fresh.keys() != old.keys():
            return f"it holds {sorted(old)} instead of {sorted(fresh)}"
        for name, t in fresh.items():
            if old[name].shape != t.shape or old[name].dtype != t.dtype:
                return f"its {name} is {old[name].dtype} {list(old[name].shape)}, not {t.dtype} {list(t.shape)}"
        rows = self.p.shape[0]
        if saved.loss.shape != (saved.step, rows) or saved.prob.shape != (saved.step, rows):
            return f"its loss history is {list(saved.loss.shape)}, not {[saved.step, rows]}"
        return None


class DescentCheckpoint(Protocol):
    """Where a descent saves its state and from which it resumes (see `descend`)."""

    def restore(self, fresh: DescentState, steps: int) -> DescentState | None:
        """The saved state to continue from, or None to start afresh; `fresh` is the state at
        step 0 (to check the saved one against, e.g. with `DescentState.mismatch`)."""

    def due(self, step: int, steps: int) -> bool:
        """Whether to save the state now, after `step` of `steps` updates."""

    def save(self, state: DescentState) -> None:
        """Keep `state` (its tensors may live on the descent's device)."""


def descend(
    loss_and_grad: LossAndGrad,
    x: Tensor,
    eps: Tensor,
    settings: PGDSettings,
    callback: StepCallback | None = None,
    *,
    checkpoint: DescentCheckpoint | None = None,
    parts: Mapping[str, Stateful] | None = None,
    active: Callable[[], Tensor | None] | None = None,
) -> PGDTrace:
    """Minimise loss(x + p) over ‖p‖₂ ≤ eps, x + p ∈ [0,1], starting from p = 0.

    x [B,C,H,W] in [0,1]; eps [B]. Returns the final p and the loss/probability
    before each step plus at the final p. A loss function that raises StopDescent ends the
    descent there: the curves then have one entry per step run, plus the final one.

    With a `checkpoint`, the descent starts from the state it restores, if any, and saves
    its state whenever the checkpoint says it is due; `parts` (the loss function's noise
    generator, its RowStopper) are saved and restored with it. A resumed descent makes the
    same updates as one never stopped, so its result is the same bit for bit.

    `active`, called after each loss evaluation, gives the rows [B] (bool) still descending
    (a RowStopper's); the others do not move, whatever the optimizer (their velocity is zeroed).
    """
    parts = dict(parts or {})
    p = torch.zeros_like(x)
    velocity = torch.zeros_like(x)
    losses: list[Tensor] = []
    probs: list[Tensor] = []
    first = 0
    if checkpoint is not None:
        saved = checkpoint.restore(_state(0, p, velocity, losses, probs, _part_states(parts), settings, x),
                                   settings.steps)
        if saved is not None:
            first, p, velocity, losses, probs = _resume(saved, x, parts)
    boundary = [_Boundary.at(first, p, velocity, parts, len(losses))] if checkpoint is not None else None
    try:
        p = _descend_from(first, loss_and_grad, x, p, velocity, eps, settings, callback, checkpoint, parts,
                          losses, probs, boundary, active)
    except KeyboardInterrupt:
        if checkpoint is not None and boundary is not None and boundary[0].step > first:
            checkpoint.save(boundary[0].state(losses, probs, settings, x))  # Ctrl-C keeps the steps done
        raise
    return PGDTrace(p.detach(), torch.stack(losses), torch.stack(probs))


@dataclass(frozen=True)
class _Boundary:
    """The descent's state at the start of its current step, kept cheaply (references, plus a copy
    of each part's small state) so that an interrupted descent can still save the steps it finished.

    Immutable, and replaced by one assignment once the next one is complete: a Ctrl-C (raised at
    any bytecode) never sees half of one step's state and half of the next's."""

    step: int
    p: Tensor
    velocity: Tensor
    parts: dict[str, dict[str, Tensor]]
    recorded: int

    @classmethod
    def at(cls, step: int, p: Tensor, velocity: Tensor, parts: Mapping[str, Stateful], recorded: int) -> _Boundary:
        """Now at the start of `step`, with `recorded` loss/probability entries so far."""
        return cls(step, p, velocity, _part_states(parts), recorded)

    def state(self, losses: list[Tensor], probs: list[Tensor], settings: PGDSettings, x: Tensor) -> DescentState:
        return _state(self.step, self.p, self.velocity, losses[: self.recorded], probs[: self.recorded], self.parts,
                      settings, x)


def _descend_from(first: int, loss_and_grad: LossAndGrad, x: Tensor, p: Tensor, velocity: Tensor, eps: Tensor,
                  settings: PGDSettings, callback: StepCallback | None, checkpoint: DescentCheckpoint | None,
                  parts: Mapping[str, Stateful], losses: list[Tensor], probs: list[Tensor],
                  boundary: list[_Boundary] | None, active: Callable[[], Tensor | None] | None = None) -> Tensor:
    """`descend`'s loop from step `first`: appends to losses/probs, returns the final p, and keeps
    `boundary[0]` at the start of the step in progress."""
    for step in range(first, settings.steps + 1):
        try:
            loss, prob, grad = loss_and_grad(x + p)
        except StopDescent as stop:
            losses.append(stop.loss.detach())
            probs.append(stop.prob.detach())
            break
        if not bool(torch.isfinite(loss).all()):
            raise SmoothInvError(
                f"the loss became NaN/inf at step {step}: the model returns non-finite "
                "outputs for these inputs; check the model file and its mean/std normalisation"
            )
        losses.append(loss.detach())
        probs.append(prob.detach())
        if step == settings.steps:
            break
        direction = normalize_l2(grad)
        moving = None if active is None else active()
        if settings.optimizer == "momentum":
            velocity = settings.momentum * velocity + direction
            if moving is not None:
                velocity = velocity * moving.view(-1, 1, 1, 1).to(velocity.dtype)
            direction = velocity
        elif moving is not None:
            direction = direction * moving.view(-1, 1, 1, 1).to(direction.dtype)
        rate = settings.learning_rate(step, eps).view(-1, 1, 1, 1)
        p = p - rate * direction
        p = (x + p).clamp(0.0, 1.0) - x
        p = project_l2(p, eps)
        if callback is not None:
            callback(step, loss, prob)
        if checkpoint is not None and checkpoint.due(step + 1, settings.steps):
            checkpoint.save(_state(step + 1, p, velocity, losses, probs, _part_states(parts), settings, x))
        if boundary is not None:
            boundary[0] = _Boundary.at(step + 1, p, velocity, parts, len(losses))
    return p


def _part_states(parts: Mapping[str, Stateful]) -> dict[str, dict[str, Tensor]]:
    return {name: part.state_dict() for name, part in parts.items()}


def _state(step: int, p: Tensor, velocity: Tensor, losses: list[Tensor], probs: list[Tensor],
           part_states: dict[str, dict[str, Tensor]], settings: PGDSettings, x: Tensor) -> DescentState:
    """The descent's state after `step` updates (velocity only where momentum uses it)."""
    empty = x.new_zeros(0, x.shape[0])
    return DescentState(step, p.detach(), velocity.detach() if settings.optimizer == "momentum" else None,
                        torch.stack(losses) if losses else empty, torch.stack(probs) if probs else empty,
                        part_states)


def _resume(saved: DescentState, x: Tensor, parts: Mapping[str, Stateful]
            ) -> tuple[int, Tensor, Tensor, list[Tensor], list[Tensor]]:
    """(next step, p, velocity, loss history, prob history) from a saved state, on x's device;
    the parts take their saved state."""
    p = saved.p.to(device=x.device, dtype=x.dtype)
    velocity = torch.zeros_like(x) if saved.velocity is None else saved.velocity.to(device=x.device, dtype=x.dtype)
    for name, part in parts.items():
        part.load_state_dict(saved.parts[name])
    return (saved.step, p, velocity, list(saved.loss.to(x.device).unbind(0)), list(saved.prob.to(x.device).unbind(0)))

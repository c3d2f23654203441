"""The scan's time budget: one deadline for the whole scan, noise probe, synthesis and evaluation.

Synthesis must leave time to measure what it found: a perturbation whose transfer was never
measured decides nothing. Before each chunk of classes the time its evaluation will take is
estimated from timed forward passes (one timed batch of clean images, then the chunks
evaluated so far), and the chunk's descent stops that long (× EVAL_MARGIN) before the
deadline, but never before it has had MIN_SYNTHESIS_SHARE of the time left: with a budget
too small for everything, some classes are synthesised and evaluated rather than none.
Evaluation measures one class at a time until the deadline. Every forward pass checks the
deadline (engine.early_stop.DeadlineModule), so the scan overruns it by at most one forward
batch; what the deadline cut is skipped with a reason, never decided on.
"""

from __future__ import annotations

import math
import time

from torch import Tensor, nn

from ..engine.early_stop import DeadlineModule, DeadlinePassed
from ..engine.metrics import predict
from ..errors import SmoothInvError, param
from ..labels import eligible

EVAL_MARGIN = 1.5
"""Evaluation is given this many times its estimated duration: a late estimate costs results."""
MIN_SYNTHESIS_SHARE = 0.5
"""Share of the time left that a chunk's synthesis gets even when its evaluation will not fit."""


class BudgetExhausted(SmoothInvError):
    """The time budget ran out before the scan had anything to decide on."""


class TimeBudget:
    """A deadline `seconds` after `start` (time.perf_counter() values; seconds None = no limit),
    and the estimate of one evaluation forward batch's duration that reserves time for it."""

    def __init__(self, seconds: float | None, start: float | None = None) -> None:
        self.seconds = seconds
        begin = time.perf_counter() if start is None else start
        self.deadline = None if seconds is None else begin + seconds
        self.per_call: float | None = None

    def passed(self, deadline: float | None = None) -> bool:
        """Whether `deadline` (default: the scan's) has passed; never without a budget."""
        deadline = self.deadline if deadline is None else deadline
        return deadline is not None and time.perf_counter() > deadline

    def guard(self, model: nn.Module, deadline: float | None = None) -> nn.Module:
        """`model` refusing forward passes after `deadline` (default: the scan's); `model` itself
        without a budget, so an unbudgeted scan runs exactly the code it always ran."""
        deadline = self.deadline if deadline is None else deadline
        return model if deadline is None else DeadlineModule(model, deadline)

    def calibrate(self, model: nn.Module, clean_images: Tensor, batch_size: int) -> None:
        """Time one evaluation-sized forward batch (once; only with a budget)."""
        if self.deadline is None or self.per_call is not None:
            return
        guarded = DeadlineModule(model, self.deadline)
        try:
            predict(guarded, clean_images[:batch_size], batch_size)
        except DeadlinePassed:
            raise self.exhausted("before the scan could start") from None
        self.per_call = guarded.seconds / max(guarded.calls, 1)

    def observe(self, guarded: nn.Module) -> None:
        """Learn the duration of a forward batch from an evaluation run through `guard`."""
        if isinstance(guarded, DeadlineModule) and guarded.calls:
            self.per_call = guarded.seconds / guarded.calls

    def synthesis_deadline(self, eval_calls: int) -> float | None:
        """When a chunk's synthesis must stop so that its `eval_calls` forward batches of
        evaluation still fit, or, if they cannot, once it has had MIN_SYNTHESIS_SHARE of the time left."""
        if self.deadline is None:
            return None
        now = time.perf_counter()
        reserved = self.deadline - EVAL_MARGIN * eval_calls * (self.per_call or 0.0)
        return max(reserved, now + MIN_SYNTHESIS_SHARE * (self.deadline - now))

    def exhausted(self, when: str) -> BudgetExhausted:
        """The error for a budget that ran out `when` (e.g. "during the noise-sink probe")."""
        return BudgetExhausted(f"the time budget of {self.seconds:g} s ran out {when}, so there is nothing to "
                               f"decide on; raise {param('time_budget')}")


def evaluation_calls(labels: list[int], configs: int, clean_labels: Tensor, batch_size: int) -> int:
    """Forward batches needed to measure `configs` perturbations of each class in `labels`
    on the clean images [N] of other classes, `batch_size` at a time."""
    return sum(configs * math.ceil(int(eligible(clean_labels, c).sum()) / batch_size) for c in labels)

"""Racing a sweep's configurations: the paper's protocol keeps only the highest-ASR configuration,
so a configuration that can no longer be the best need not finish its descent.

Every `every` steps of the batched descent (one row per configuration), from step `start` on, and
less often as the descent goes on (RACE_GROWTH), each row's current perturbation is applied to a fixed clean subset and its transfer ASR
measured; a row whose Wilson upper bound falls below `ratio` × the best row's Wilson lower bound stops
there (successive elimination, as in bandit best-arm identification). Rows that stopped on
their own are measured once more at their final perturbation, so they stay in the race as the bar.

The leader is not stopped when its smoothed target probability saturates: on cifar10-badnets
stopping a config at 0.99 (with its ε used) cut the best ASR from 75.2% to 65.4% (the
perturbation keeps improving its transfer after G is sure of the one image; docs/benchmarks.md).

What it bounds: the sampling error of ASR on the subset at the current step. A row that was behind
at step s but would have overtaken the leader later is stopped anyway; docs/benchmarks.md measures
how the best ASR compares with the descent run to the end (`--exhaustive`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..engine.metrics import predict, wilson_bounds
from ..labels import eligible

RACE_EVERY = 10
RACE_START = 10
"""No row is eliminated before this step: a config that starts slowly gets a fair look."""
RACE_GROWTH = 0.25
"""After each measurement at step s the next comes max(every, growth × s) steps later (rounded down to
a multiple of every): every 10 steps to step 80, then at 100, 120, 150, 180, 220, 270, 330 (15
measurements in 400 steps instead of 40). Eliminations happen early (step 20 for six of the eight
configs on cifar10-badnets), where the schedule is dense; on that image no later measurement stopped one."""
RACE_IMAGES = 256
RACE_Z = 2.0
RACE_RATIO = 0.5
"""A row stops only when its upper bound is below this fraction of the leader's lower bound.
Transfer keeps growing during the descent: on cifar10-badnets at 400 steps, a config at 54% when
the leader was at 70% or more (step 110) ended best (82.6% against 80.9%); stopping it when its bound
was merely below the leader's, or 10 points below, lost it. Configs far behind (1% against 21%)
never caught up."""


@dataclass
class Elimination:
    """Why a row stopped early: at which step, with which subset ASR and bounds, against which bar."""

    step: int
    asr: float
    upper: float
    best_lower: float

    def describe(self, images: int) -> str:
        return (f"stopped at step {self.step}: transfer {self.asr:.1%} on {images} clean images, upper bound "
                f"{self.upper:.1%}, far below the best configuration's lower bound {self.best_lower:.1%}")


@dataclass
class ConfigRace:
    """The race among rows whose descent started from `origin` [B,C,H,W] toward `target`; transfer is
    measured on clean_images [n,C,H,W] of other classes (engine.early_stop.RowRace)."""

    model: nn.Module
    origin: Tensor
    target: int
    clean_images: Tensor
    every: int = RACE_EVERY
    start: int = RACE_START
    z: float = RACE_Z
    ratio: float = RACE_RATIO
    growth: float = RACE_GROWTH
    batch_size: int = 256
    eliminated: dict[int, Elimination] = field(default_factory=dict)
    calls: int = 0

    def __post_init__(self) -> None:
        rows = self.origin.shape[0]
        self.lower = torch.zeros(rows, dtype=torch.float64)
        self.upper = torch.ones(rows, dtype=torch.float64)
        self.rate = torch.zeros(rows, dtype=torch.float64)
        self.final = torch.zeros(rows, dtype=torch.bool)

    @classmethod
    def on(cls, model: nn.Module, origin: Tensor, target: int, clean_images: Tensor, clean_labels: Tensor,
           images: int = RACE_IMAGES, **options: object) -> ConfigRace:
        """The race measured on the first `images` clean images not labelled `target`."""
        others = clean_images[eligible(clean_labels, target)][:images]
        return cls(model, origin, target, others, **options)  # type: ignore[arg-type]

    def due(self, step: int) -> bool:
        """Whether the race measures at `step` (a multiple of `every`): from `start` on, at the
        schedule RACE_GROWTH describes."""
        every = max(int(self.every), 1)
        at = -(-max(int(self.start), every) // every) * every
        while at < step:
            at += max(every, int(self.growth * at) // every * every)
        return at == step

    def __call__(self, x: Tensor, active: Tensor) -> Tensor:
        self.calls += 1
        active = active.cpu()
        if not self.due(self.calls * self.every):
            return torch.zeros_like(active)
        measure = active | ~self.final
        for row in torch.nonzero(measure).flatten().tolist():
            p = (x[row] - self.origin[row].to(x.device)).detach()
            hits = predict(self.model, (self.clean_images.to(x.device) + p).clamp(0.0, 1.0), self.batch_size) == self.target
            self.rate[row] = float(hits.float().mean())
            self.final[row] = not bool(active[row])
        n = self.clean_images.shape[0]
        self.lower, self.upper = wilson_bounds(self.rate, n, self.z)
        best = float(self.lower.max())
        stop = active & (self.upper < self.ratio * best)
        self.final |= stop  # it stops before this step's update: the perturbation just measured is its last
        for row in torch.nonzero(stop).flatten().tolist():
            self.eliminated[row] = Elimination(self.calls * self.every, float(self.rate[row]),
                                               float(self.upper[row]), best)
        return stop

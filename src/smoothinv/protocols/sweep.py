"""The paper's protocol: run a method over its config grid, keep the highest-ASR result.

ε scales with input size. The paper's ε ∈ {5, 10} are l2 norms for 3×224×224 inputs;
at 32×32 the same ε lets *every* class's perturbation flip most images (a universal
adversarial perturbation), hiding the backdoor. The default grid therefore uses
ε · sqrt(C·H·W / (3·224·224)), which keeps the per-pixel budget of the paper
(methods.smoothinv.eps_scale).

The sweep knows methods only through their contract: a `MethodSpec`, its class's
`grid_axes`, and `Inverter.invert`.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..engine.metrics import attack_success_rate
from ..engine.precision import with_precision
from ..errors import SmoothInvError
from ..methods.base import InversionResult, RowControl
from ..methods.registry import MethodSpec, method_class
from ..methods.eps import PAPER_EPS, eps_scale
from .race import RACE_EVERY, RACE_GROWTH, RACE_IMAGES, RACE_RATIO, RACE_START, RACE_Z, ConfigRace

PAPER_SIGMAS = (0.12, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Grid:
    """The configurations to try: absolute ε values × σ values."""

    eps: tuple[float, ...]
    sigmas: tuple[float, ...]
    eps_reference: tuple[float, ...] | None = None
    scale: float | None = None

    @classmethod
    def for_shape(
        cls,
        shape: Sequence[int],
        eps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> Grid:
        """Absolute `eps` if given, else the paper's ε scaled to `shape` (C,H,W)."""
        sigmas = tuple(float(s) for s in (sigmas or PAPER_SIGMAS))
        if not all(math.isfinite(s) and s >= 0 for s in sigmas):
            raise SmoothInvError(f"sigma values must be >= 0 (got {list(sigmas)})")
        if eps:
            if not all(math.isfinite(e) and e > 0 for e in eps):
                raise SmoothInvError(f"eps values must be > 0 (got {list(eps)})")
            return cls(tuple(float(e) for e in eps), sigmas)
        scale = eps_scale(shape)
        return cls(tuple(round(e * scale, 4) for e in PAPER_EPS), sigmas, PAPER_EPS, round(scale, 6))

    def describe(self) -> dict[str, Any]:
        return {
            "eps": list(self.eps),
            "sigmas": list(self.sigmas),
            "eps_source": "absolute (as given)" if self.scale is None else "paper eps x sqrt(C*H*W / (3*224*224))",
            "eps_reference_224": None if self.eps_reference is None else list(self.eps_reference),
            "eps_scale": self.scale,
        }


@dataclass
class Run:
    """One configuration's result and its ASR on the clean set."""

    result: InversionResult
    asr: float
    eval_seconds: float
    stopped: str | None = None
    """Why the descent ended before its last step (the race, or a saturated target probability)."""
    asr_images: int | None = None
    """How many clean images `asr` was measured on, when not the whole clean set: a config the race
    eliminated keeps the race's measurement (its subset, at the descent's precision)."""

    def summary(self) -> dict[str, Any]:
        out = self.result.summary()
        out["asr"] = round(self.asr, 6)
        out["eval_seconds"] = round(self.eval_seconds, 3)
        out["stopped"] = self.stopped
        out["asr_images"] = self.asr_images
        return out


@dataclass
class Sweep:
    """All runs of a method (and of its baseline) on one image and target."""

    method: str
    runs: list[Run]
    baseline: list[Run] = field(default_factory=list)

    @property
    def best(self) -> Run:
        """Highest ASR; ties go to the higher final target probability."""
        return max(self.runs, key=lambda r: (r.asr, float(r.result.target_prob[-1])))


ProgressHook = Callable[[str, int], None]
"""Called with (label of the running config, steps just done)."""


def grid_options(method: str, grid: Grid) -> list[dict[str, float]]:
    """The options a method takes from the grid (ε, σ or both), one dict per grid point."""
    axes = method_class(method).grid_axes
    values = {"eps": grid.eps, "sigma": grid.sigmas}
    return [dict(zip(axes, combo)) for combo in itertools.product(*(values[a] for a in axes))]


@dataclass(frozen=True)
class Racing:
    """How the sweep spends its steps: all configurations run as one batched descent; a row stops
    when its target probability reaches `stop_prob` (None, the default: never; stopping there cost
    ASR, race.py) and, every `every` steps from step `start`, when the race (race.py) finds on
    `images` clean images (less often later on: `growth`) that its upper bound is below `ratio` × the leader's lower bound; the descent and the race run at
    `precision` (engine.precision). The configs still running at the end are measured on the whole
    clean set in float32; an eliminated config reports the race's measurement (`Run.asr_images`)."""

    stop_prob: float | None = None
    every: int = RACE_EVERY
    start: int = RACE_START
    images: int = RACE_IMAGES
    z: float = RACE_Z
    ratio: float = RACE_RATIO
    growth: float = RACE_GROWTH
    """After step s the race next measures max(every, growth × s) steps later (race.py)."""
    precision: str = "auto"
    """How the descent and the race run the model (engine.precision); final ASRs are float32."""


def run_sweep(
    model: nn.Module,
    image: Tensor,
    target: int,
    clean_images: Tensor,
    clean_labels: Tensor,
    grid: Grid,
    *,
    method: MethodSpec,
    baseline: MethodSpec | None = None,
    seed: int = 0,
    eval_batch: int = 256,
    progress: ProgressHook | None = None,
    racing: Racing | None = Racing(),
) -> Sweep:
    """Invert `image` [C,H,W] toward `target` at every grid point of `method` (and of
    `baseline`) and measure each ASR on clean_images [N,C,H,W] in batches of `eval_batch`.

    Each run is seeded with `seed`, so a configuration's result does not depend on which
    others run. With `racing` (the default) a method's grid points run as one batched descent
    whose rows stop early (saturated, or eliminated by the race); racing None runs every grid
    point to its last step, one after the other (the paper's protocol as written, `--exhaustive`).
    """

    def run_all(spec: MethodSpec) -> list[Run]:
        if racing is not None:
            return _raced(model, image, target, clean_images, clean_labels, grid, spec, seed, eval_batch, progress,
                          racing)
        runs = []
        for point in grid_options(spec.name, grid):
            inverter = spec.with_options(**point).build()
            label = f"{spec.name} " + " ".join(f"{k}={v:g}" for k, v in point.items())
            hook = None if progress is None else (lambda step, _l, _p, label=label: progress(label, 1))
            result = inverter.invert(model, image, target, seed=seed, callback=hook)
            start = time.perf_counter()
            asr = attack_success_rate(model, result.trigger, clean_images, clean_labels, target, batch_size=eval_batch)
            runs.append(Run(result, asr, time.perf_counter() - start))
        return runs

    return Sweep(method.name, run_all(method), run_all(baseline) if baseline else [])


def _raced(model: nn.Module, image: Tensor, target: int, clean_images: Tensor, clean_labels: Tensor, grid: Grid,
           spec: MethodSpec, seed: int, eval_batch: int, progress: ProgressHook | None, racing: Racing) -> list[Run]:
    """Every grid point of `spec` as one row of one `invert_rows` call, raced (see `Racing`)."""
    points = grid_options(spec.name, grid)
    origin = image[None].expand(len(points), *image.shape).contiguous()
    fast = with_precision(model, racing.precision)
    race = ConfigRace.on(fast, origin, target, clean_images, clean_labels, racing.images, every=racing.every,
                         start=racing.start, z=racing.z, ratio=racing.ratio, growth=racing.growth,
                         batch_size=eval_batch)
    hook = None if progress is None else (lambda step, _l, _p: progress(f"{spec.name} (all configs)", 1))
    outcome = spec.build().invert_rows(fast, origin, torch.full((len(points),), target),
                                       [spec.with_options(**point).config for point in points], seed=seed,
                                       callback=hook, control=RowControl(stop_prob=racing.stop_prob, race=race))
    runs = []
    for row, result in enumerate(outcome.results):
        assert result is not None  # no deadline
        if row in race.eliminated:  # far behind the leader: its race measurement says enough
            runs.append(Run(result, race.eliminated[row].asr, 0.0, _why_stopped(result, row, race, racing),
                            race.clean_images.shape[0]))
            continue
        start = time.perf_counter()
        asr = attack_success_rate(model, result.trigger, clean_images, clean_labels, target, batch_size=eval_batch)
        runs.append(Run(result, asr, time.perf_counter() - start, _why_stopped(result, row, race, racing)))
    return runs


def _why_stopped(result: InversionResult, row: int, race: ConfigRace, racing: Racing) -> str | None:
    if row in race.eliminated:
        return race.eliminated[row].describe(race.clean_images.shape[0])
    prob = result.target_prob
    if racing.stop_prob is not None and len(prob) > 1 and bool((prob[:-1] >= racing.stop_prob).any()):
        return f"target probability reached {racing.stop_prob:g} with the whole eps used"
    return None


def sweep_steps(method: MethodSpec, baseline: MethodSpec | None, grid: Grid, racing: Racing | None = Racing()) -> int:
    """Total optimisation steps of a sweep, for a progress bar (raced: the batched descents' steps,
    at most; rows that stop early do not shorten a descent that other rows continue)."""
    specs = [method] + ([baseline] if baseline else [])
    if racing is not None:
        return sum(s.build().rows_steps([s.with_options(**p).config for p in grid_options(s.name, grid)]) for s in specs)
    return sum(len(grid_options(s.name, grid)) * s.build().total_steps() for s in specs)

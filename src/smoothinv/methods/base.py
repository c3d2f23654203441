"""The contract every inversion method honours (a template method, as torchattacks' `Attack`).

    method = get_method("smoothinv", eps=1.0, sigma=0.25)
    result = method.invert(model, image, target, seed=0)
    asr = attack_success_rate(model, result.trigger, clean_images, clean_labels, target)

`Inverter` owns the work around each method: it checks the inputs against the model, puts the
model in eval mode and restores it, gives every row its own random generator, times the run
and packages `InversionResult`s. A method implements only its optimisation (`_optimise`: one
configuration, a batch of rows). `invert_rows` runs many rows with a configuration each (what
a scan over classes × configurations needs); it runs one batch per group of rows, and a method
that can run different configurations in one batch says which rows group together (`_group`;
SmoothInv: rows that differ only in ε and σ) and how a group runs (`_optimise_group`).

Row independence: row b draws its noise or random start only from its own generator, seeded
with the run's seed. A row's result is therefore the same alone as in any batch (up to float
rounding), and the scan's choice of classes cannot change another class's result.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from ..engine.early_stop import DeadlinePassed, RowRace, RowStopper
from ..engine.metrics import model_device
from ..engine.pgd import DescentCheckpoint, StepCallback
from ..engine.smoothing import Denoiser
from ..errors import SmoothInvError
from ..triggers import Trigger
from .config import MethodConfig

C = TypeVar("C", bound=MethodConfig)


@dataclass
class InversionResult:
    """One synthesised trigger.

    image, synthesized: [C,H,W] in [0,1]; loss, target_prob: [steps+1] (before each
    step, then at the end); config: the method's resolved options; seconds: wall time.
    """

    method: str
    target: int
    image: Tensor
    synthesized: Tensor
    trigger: Trigger
    loss: Tensor
    target_prob: Tensor
    config: dict[str, Any]
    seconds: float
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def perturbation(self) -> Tensor:
        """synthesized − image, [C,H,W]."""
        return self.synthesized - self.image

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (no tensors but the per-step curves as lists)."""
        p = self.perturbation
        return {
            "method": self.method,
            "target": self.target,
            "config": self.config,
            "perturbation_l2": float(p.norm()),
            "perturbation_linf": float(p.abs().max()),
            "final_loss": float(self.loss[-1]),
            "final_target_prob": float(self.target_prob[-1]),
            "loss_curve": [round(float(v), 6) for v in self.loss],
            "target_prob_curve": [round(float(v), 6) for v in self.target_prob],
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Found:
    """What a method's optimisation found for one row (the contract packages it).

    loss, target_prob: [steps+1]; config: the options it ran with, resolved (JSON-ready)."""

    trigger: Trigger
    loss: Tensor
    target_prob: Tensor
    config: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class RowControl:
    """How a caller steers a many-row run (`Inverter.invert_rows`).

    stop_prob: a row whose target probability reaches it may stop early (methods that cannot
    stop rows ignore it); deadline: a time.perf_counter() value after which no new work starts
    (rows not reached get no result); checkpoint: the descent checkpoint of a method that can
    resume its run, given the run's RowStopper; race: successive elimination among the rows
    (engine.early_stop.RowRace), for methods that can stop rows."""

    stop_prob: float | None = None
    deadline: float | None = None
    checkpoint: Callable[[RowStopper], DescentCheckpoint] | None = None
    race: RowRace | None = None

    def passed(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline


@dataclass
class RowsOutcome:
    """One result per row (None: the deadline came first), and whether it cut the run short."""

    results: list[InversionResult | None]
    timed_out: bool = False


class Inverter(ABC, Generic[C]):
    """An inversion method: synthesise a trigger toward a target class from clean images.

    Built from its typed configuration (`Config`), or from keyword options that make one:
    `SmoothInv(eps=1.0)` is `SmoothInv(SmoothInvConfig(eps=1.0))`.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]]
    grid_axes: ClassVar[tuple[str, ...]] = ()
    """Options the paper's protocol sweeps over (see protocols.sweep)."""
    anomaly_statistic: ClassVar[str | None] = None
    """An extras key whose abnormally SMALL value flags a class (Neural Cleanse's mask norm);
    None: classes are judged by the transfer of their trigger (detection.decision)."""

    def __init__(self, config: C | None = None, /, *, name: str | None = None, **options: Any) -> None:
        if config is not None and options:
            raise SmoothInvError("give a configuration or options, not both")
        self.name = name or type(self).name
        self.config: C = config if config is not None else self.Config.build(options, self.name)  # type: ignore[assignment]
        if not isinstance(self.config, self.Config):
            raise SmoothInvError(f"method {self.name!r} takes a {self.Config.__name__}, "
                                 f"not a {type(self.config).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    # ----------------------------------------------------------------------- what a method defines

    @abstractmethod
    def _optimise(self, model: nn.Module, x: Tensor, y: Tensor, config: C, generators: list[torch.Generator],
                  callback: StepCallback | None) -> list[Found]:
        """Rows x [B,C,H,W] in [0,1] (on the model's device), targets y [B] → one Found per row.

        The model is in eval mode; row b draws randomness only from generators[b]."""

    def describe(self, config: C | None = None) -> dict[str, Any]:
        """The options of a run, JSON-ready, as its results record them."""
        return (config or self.config).to_dict()

    def denoiser_for(self, config: C | None = None) -> Denoiser | None:
        """T of the smoothed classifier this method optimises under `config` (None: the identity,
        or a method that does not smooth). Protocols use it to probe or evaluate G as the method sees it."""
        return None

    # ----------------------------------------------------------------------- the contract

    def invert(self, model: nn.Module, image: Tensor, target: int, *, seed: int = 0,
               callback: StepCallback | None = None) -> InversionResult:
        """image [C,H,W] in [0,1] → the trigger synthesised toward `target`."""
        if not isinstance(image, Tensor) or image.dim() != 3:
            shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise SmoothInvError(f"expected one image [C,H,W], got {shape}")
        return self.invert_batch(model, image[None], torch.tensor([target]), seed=seed, callback=callback)[0]

    def invert_batch(self, model: nn.Module, images: Tensor, targets: Tensor, *, seed: int = 0,
                     callback: StepCallback | None = None) -> list[InversionResult]:
        """images [B,C,H,W] in [0,1], targets [B] → one result per row, all at this configuration."""
        outcome = self.invert_rows(model, images, targets, None, seed=seed, callback=callback)
        return [r for r in outcome.results if r is not None]

    def invert_rows(self, model: nn.Module, images: Tensor, targets: Tensor, configs: Sequence[C] | None = None, *,
                    seed: int = 0, callback: StepCallback | None = None, control: RowControl | None = None
                    ) -> RowsOutcome:
        """Like `invert_batch`, with row b run at configs[b] (default: this method's configuration)."""
        was_training = model.training
        model.eval()
        try:
            x, y = prepare_batch(model, images, targets)
            configs = self._row_configs(configs, x.shape[0])
            start = time.perf_counter()
            found, timed_out = self._run_rows(model, x, y, configs, seed, callback, control or RowControl())
        finally:
            model.train(was_training)
        seconds = (time.perf_counter() - start) / x.shape[0]
        results = [None if f is None else inversion_result(self.name, images[i], int(targets[i]), f, seconds)
                   for i, f in enumerate(found)]
        return RowsOutcome(results, timed_out)

    def rows_steps(self, configs: Sequence[C]) -> int:
        """Optimisation steps `invert_rows` makes for rows at `configs` (for progress bars)."""
        return sum(group.steps for group in _distinct([self._group(c) for c in configs]))  # type: ignore[attr-defined]

    def total_steps(self) -> int:
        """Optimisation steps one call makes at this configuration."""
        return int(self.config.steps)  # type: ignore[attr-defined]

    # ----------------------------------------------------------------------- overridable parts

    def _group(self, config: C) -> C:
        """The part of a row's configuration that rows must share to run as one batch (by
        default all of it; SmoothInv lets ε and σ differ within a batch)."""
        return config

    def _optimise_group(self, model: nn.Module, x: Tensor, y: Tensor, configs: list[C],
                        generators: list[torch.Generator], callback: StepCallback | None,
                        control: RowControl) -> tuple[list[Found], bool]:
        """One batch of rows of one group (row b at configs[b]): (a Found per row, whether the
        deadline cut it short). The default runs `_optimise` at the group's configuration."""
        return self._optimise(model, x, y, configs[0], generators, callback), False

    def _run_rows(self, model: nn.Module, x: Tensor, y: Tensor, configs: list[C], seed: int,
                  callback: StepCallback | None, control: RowControl) -> tuple[list[Found | None], bool]:
        """(a Found per row, None where the deadline came first; whether it did): one batch per
        group of rows (`_group`), in order, none started after the deadline. A checkpoint is
        handed on only when all rows are one batch."""
        keys = [self._group(c) for c in configs]
        groups = _distinct(keys)
        if len(groups) > 1:
            control = replace(control, checkpoint=None)
        found: list[Found | None] = [None] * x.shape[0]
        timed_out = False
        for group in groups:
            if control.passed():
                return found, True
            rows = [i for i, key in enumerate(keys) if key == group]
            try:
                batch, cut = self._optimise_group(model, x[rows], y[rows], [configs[i] for i in rows],
                                                  row_generators(seed, len(rows), x.device), callback, control)
            except DeadlinePassed:
                return found, True
            for i, f in zip(rows, batch):
                found[i] = f
            timed_out |= cut
        return found, timed_out

    def _row_configs(self, configs: Sequence[C] | None, rows: int) -> list[C]:
        if configs is None:
            return [self.config] * rows
        configs = list(configs)
        if len(configs) != rows:
            raise SmoothInvError(f"expected one configuration per row: {len(configs)} for {rows} rows")
        for c in configs:
            if not isinstance(c, self.Config):
                raise SmoothInvError(f"method {self.name!r} takes {self.Config.__name__} rows, not {type(c).__name__}")
        return configs


def _distinct(configs: Sequence[C]) -> list[C]:
    """configs without repeats, in order of first appearance."""
    out: list[C] = []
    for c in configs:
        if c not in out:
            out.append(c)
    return out


def inversion_result(method: str, image: Tensor, target: int, found: Found, seconds: float) -> InversionResult:
    """The result for one image [C,H,W]; it owns copies of its tensors (a view would keep the
    whole batch alive)."""
    image = image.detach().cpu().to(torch.float32).clone()
    return InversionResult(method=method, target=target, image=image,
                           synthesized=found.trigger.apply(image[None])[0], trigger=found.trigger,
                           loss=found.loss.detach().cpu().clone(), target_prob=found.target_prob.detach().cpu().clone(),
                           config=dict(found.config), seconds=seconds, extras=found.extras)


def row_generators(seed: int, rows: int, device: torch.device) -> list[torch.Generator]:
    """One generator per row on `device`, each seeded with `seed`: a row draws the same numbers
    whichever rows share its batch."""
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(rows)]


def draw_rows(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device,
              sampler: Callable[..., Tensor] = torch.randn) -> Tensor:
    """[B, *shape] with row b drawn from generators[b] (`sampler`: torch.randn or torch.rand)."""
    return torch.stack([sampler(tuple(shape), generator=g, device=device) for g in generators])


def check_inputs(images: Tensor, targets: Tensor | None = None) -> None:
    """images must be a non-empty [B,C,H,W] batch, finite and in [0,1]; one target per image."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise SmoothInvError(f"expected images [B,C,H,W] with B >= 1, got {shape}")
    if images.is_complex() or not bool(torch.isfinite(images).all()) or images.min() < 0 or images.max() > 1:
        raise SmoothInvError("image values must be finite and in [0,1]; convert with smoothinv.data.load_image")
    if targets is not None and (not isinstance(targets, Tensor) or targets.dim() != 1
                                or targets.shape[0] != images.shape[0]):
        shape = list(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise SmoothInvError(f"expected one target per image: targets {shape} for {images.shape[0]} images")
    if targets is not None and (targets.is_floating_point() or targets.is_complex()):
        raise SmoothInvError(f"targets must be integer class indices (got {targets.dtype})")


def check_target(targets: Tensor, num_classes: int) -> None:
    """Every target must name one of the model's classes."""
    bad = targets[(targets < 0) | (targets >= num_classes)]
    if bad.numel():
        raise SmoothInvError(
            f"target class {int(bad[0])} does not exist: the model has {num_classes} classes (0..{num_classes - 1})"
        )


def prepare_batch(model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Check a batch and its targets against the model; return them on the model's device
    (images float32, targets long)."""
    targets = torch.as_tensor(targets)
    check_inputs(images, targets)
    device = model_device(model)
    x = images.to(device=device, dtype=torch.float32)
    y = targets.to(device=device, dtype=torch.long)
    with torch.no_grad():
        check_target(y, model(x[:1]).shape[-1])
    return x, y


def non_finite_loss(step: int | None = None) -> SmoothInvError:
    """The error for a loss that became NaN/inf (at `step`, if given): the model's outputs are at fault."""
    at = "" if step is None else f" at step {step}"
    return SmoothInvError(
        f"the loss became NaN/inf{at}: the model returns non-finite outputs for these inputs; "
        "check the model file and its normalisation"
    )

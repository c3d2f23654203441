"""The call shape every inversion method shares.

    method = get_method("smoothinv", eps=1.0, sigma=0.25)
    result = method.invert(model, image, target, seed=0)
    asr = attack_success_rate(model, result.trigger, clean_images, clean_labels, target)

Methods are configured in their constructor and are stateless across calls; `invert`
takes a [0,1] image [C,H,W] and a target class and returns an `InversionResult`.
`invert_batch` does the same for several (image, target) rows at once.
"""

from __future__ import annotations

import inspect
import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..engine.metrics import model_device
from ..engine.pgd import StepCallback
from ..errors import SmoothInvError
from ..triggers import AdditiveTrigger, Trigger


@dataclass
class InversionResult:
    """One synthesised trigger.

    image, synthesized: [C,H,W] in [0,1]; loss, target_prob: [steps+1] (before each
    step, then at the end); config: the method's parameters; seconds: wall time.
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


class Inverter(ABC):
    """An inversion method: synthesise a trigger toward a target class from clean images."""

    name: str = ""
    grid_axes: tuple[str, ...] = ()
    """Constructor options the paper's protocol sweeps over (see engine.sweep)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The method's parameters, JSON-ready."""

    @abstractmethod
    def invert_batch(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        *,
        seed: int = 0,
        callback: StepCallback | None = None,
    ) -> list[InversionResult]:
        """images [B,C,H,W] in [0,1], targets [B] → one result per row."""

    def invert(
        self,
        model: nn.Module,
        image: Tensor,
        target: int,
        *,
        seed: int = 0,
        callback: StepCallback | None = None,
    ) -> InversionResult:
        """image [C,H,W] in [0,1] → the trigger synthesised toward `target`."""
        if image.dim() != 3:
            raise SmoothInvError(f"expected one image [C,H,W], got shape {list(image.shape)}")
        targets = torch.tensor([target], dtype=torch.long)
        return self.invert_batch(model, image[None], targets, seed=seed, callback=callback)[0]

    def total_steps(self) -> int:
        """Number of optimisation steps one call makes (for progress bars)."""
        return int(self.config().get("steps", 0))


def trigger_result(
    name: str,
    image: Tensor,
    target: int | Tensor,
    trigger: Trigger,
    loss: Tensor,
    target_prob: Tensor,
    config: dict[str, Any],
    seconds: float,
    extras: dict[str, Any] | None = None,
) -> InversionResult:
    """The result for one image [C,H,W]: its synthesized image is `trigger` applied to it."""
    image = image.detach().cpu()
    return InversionResult(
        method=name,
        target=int(target),
        image=image,
        synthesized=trigger.apply(image[None])[0],
        trigger=trigger,
        loss=loss,
        target_prob=target_prob,
        config=dict(config),
        seconds=seconds,
        extras={} if extras is None else extras,
    )


def additive_results(
    name: str,
    images: Tensor,
    targets: Tensor,
    perturbations: Tensor,
    loss: Tensor,
    target_prob: Tensor,
    config: dict[str, Any],
    seconds: float,
) -> list[InversionResult]:
    """Split a batched additive descent (p [B,C,H,W], curves [steps+1,B]) into results.

    Each result owns copies of its rows: a view would keep the whole batch alive."""
    b = images.shape[0]
    return [
        trigger_result(name, images[i].clone(), targets[i], AdditiveTrigger(perturbations[i].detach().cpu().clone()),
                       loss[:, i].cpu().clone(), target_prob[:, i].cpu().clone(), config, seconds / b)
        for i in range(b)
    ]


_METHODS: dict[str, tuple[type[Inverter], dict[str, Any], str]] = {}


def register_method(name: str, description: str, **fixed: Any) -> Callable[[type[Inverter]], type[Inverter]]:
    """Register an Inverter class under `name`; `fixed` options define that name
    (e.g. "momentum" = SmoothInv with optimizer="momentum") and override the caller's."""

    def decorate(cls: type[Inverter]) -> type[Inverter]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        _METHODS[name] = (cls, fixed, description)
        return cls

    return decorate


def method_class(name: str) -> type[Inverter]:
    """The Inverter class registered as `name`."""
    if name not in _METHODS:
        raise SmoothInvError(f"unknown method {name!r}; choose from: {', '.join(sorted(_METHODS))}")
    return _METHODS[name][0]


def method_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of `options` that method `name`'s constructor takes (shared CLI settings
    such as noise_samples mean nothing to a method without noise)."""
    accepted = inspect.signature(method_class(name).__init__).parameters
    return {k: v for k, v in options.items() if k in accepted}


def get_method(name: str, **options: Any) -> Inverter:
    """Build the method registered as `name` with its options."""
    cls, fixed, _ = _METHODS[name] if name in _METHODS else (method_class(name), {}, "")
    return cls(**{**options, **fixed})


def list_methods() -> dict[str, str]:
    """{name: description} of every registered method."""
    return {name: desc for name, (_, _, desc) in sorted(_METHODS.items())}


def check_inputs(images: Tensor, targets: Tensor | None = None) -> None:
    """images must be a non-empty [B,C,H,W] batch, finite and in [0,1]; one target per image."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise SmoothInvError(f"expected images [B,C,H,W] with B >= 1, got {shape}")
    if not bool(torch.isfinite(images).all()) or images.min() < 0 or images.max() > 1:
        raise SmoothInvError("image values must be finite and in [0,1]; convert with smoothinv.data.load_image")
    if targets is not None and (targets.dim() != 1 or targets.shape[0] != images.shape[0]):
        raise SmoothInvError(
            f"expected one target per image: targets shape {list(targets.shape)} for {images.shape[0]} images"
        )


def non_finite_loss(step: int | None = None) -> SmoothInvError:
    """The error for a loss that became NaN/inf (at `step`, if given): the model's outputs are at fault."""
    at = "" if step is None else f" at step {step}"
    return SmoothInvError(
        f"the loss became NaN/inf{at}: the model returns non-finite outputs for these inputs; "
        "check the model file and --mean/--std"
    )


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
    check_inputs(images, targets)
    device = model_device(model)
    x = images.to(device=device, dtype=torch.float32)
    y = targets.to(device=device, dtype=torch.long)
    with torch.no_grad():
        check_target(y, model(x[:1]).shape[-1])
    return x, y


def check_positive_int(name: str, value: Any) -> int:
    """`value` as an int; it must be an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SmoothInvError(f"{name} must be an integer >= 1 (got {value!r})")
    return int(value)


def check_positive_float(name: str, value: Any) -> float:
    """`value` as a float; it must be a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SmoothInvError(f"{name} must be a number (got {value!r})") from None
    if not (math.isfinite(v) and v > 0):
        raise SmoothInvError(f"{name} must be finite and > 0 (got {value!r})")
    return v

"""Ways to remove a backdoor by fine-tuning on a small clean set, one class per method.

Every method has one call shape, `method(model, images, labels, seed=...) -> Repaired`: the base
class `Repair` copies the model, lets the method prepare (`_prepare`: synthesise or invert
triggers, prune), fine-tunes the copy with the shared `FineTuneRecipe` under the method's
objective (`_objective`), and records what it did. The user's model is never changed.

- `FineTune` ("fine-tune"): plain fine-tuning on the clean images, the honest control: whatever a
  method gains over it comes from its triggers or its pruning, not from the extra training.
- `Unlearning` ("unlearn"): Neural Cleanse's unlearning (Wang et al., S&P 2019, §VI) with the
  triggers SmoothInv recovered: a fraction of each batch carries a recovered trigger and keeps its
  true label. Besides the scan's own perturbations (one image, the best run per ε) it synthesises
  perturbations toward each target from more clean images, since a SmoothInv perturbation is
  synthesised from one image and may be partly specific to it.
- `NCUnlearning` ("nc-unlearn"): the same unlearning with Neural Cleanse's own reversed triggers
  (mask and pattern), inverted toward each target from clean images of the fine-tuning split.
- `FinePruning` ("fine-pruning"): Liu et al., RAID 2018: the channels of the last convolutional
  stage that stay dormant on clean data are pruned, then the model is fine-tuned.

Deviations from the papers are in docs/repair.md.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.metrics import accuracy, model_device
from ..engine.precision import bf16_supported
from ..errors import SmoothInvError
from ..labels import eligible
from ..methods.registry import method_spec
from ..registry import Registry
from ..training import Augment, train_classifier
from ..triggers import AdditiveTrigger, Trigger
from .recovered import RecoveredTrigger

Progress = Callable[[str], None]
"""Told, in a few words, what the repair is doing now (for a CLI's status line)."""


@dataclass(frozen=True)
class Findings:
    """What the repair knows about the backdoor: the target classes, and the triggers recovered
    for them (a scan's, or the user's perturbation files)."""

    targets: tuple[int, ...]
    recovered: tuple[RecoveredTrigger, ...] = ()


@dataclass(frozen=True)
class FineTuneRecipe:
    """The fine-tuning every method ends with: SGD with Nesterov momentum and a one-cycle schedule
    (training.train_classifier), random translations of up to `shift` pixels (None: an eighth of
    the image side), BatchNorm statistics updated, bfloat16 autocast where the CPU or GPU has it.

    The learning rate is low on purpose: at 0.01 plain fine-tuning alone erased cifar10-badnets'
    backdoor but cost 2.6 points of clean accuracy; at 0.001 it kept both (docs/repair.md)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.001
    weight_decay: float = 5e-4
    shift: int | None = None
    flip: bool = False

    def augment(self, images: Tensor) -> Augment:
        shift = max(1, min(images.shape[-2:]) // 8) if self.shift is None else self.shift
        return Augment(pad=shift, flip=self.flip)


@dataclass
class Repaired:
    """A repaired copy of the model (eval mode) and what the method did to it."""

    model: nn.Module
    method: str
    details: dict[str, Any]
    seconds: float


class Repair(ABC):
    """A repair method; subclasses set `name` and may override `_prepare` and `_objective`."""

    name: ClassVar[str]
    finds_own_target: ClassVar[bool] = False
    """True for a method that can identify the target class itself (InverTune): it repairs even when
    no scan or trigger names one."""
    trains_on_recovered: ClassVar[bool] = False
    """True for a method that fine-tunes on the recovered triggers themselves (unlearning): their
    ASR after the repair then says little about the backdoor."""

    def __init__(self, recipe: FineTuneRecipe | None = None) -> None:
        self.recipe = recipe or FineTuneRecipe()

    @classmethod
    def for_findings(cls, findings: Findings, recipe: FineTuneRecipe | None = None) -> Repair:
        """The method set up for `findings` with its default options (`build_repair`)."""
        return cls(recipe=recipe)

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor, *, seed: int = 0,
                 progress: Progress | None = None) -> Repaired:
        """Repair a copy of `model` with clean images [N,C,H,W] in [0,1] and their labels [N]."""
        if len(images) == 0:
            raise SmoothInvError("the clean set for fine-tuning is empty; give the repair some clean images")
        started = time.perf_counter()
        say = progress or (lambda _: None)
        work = copy.deepcopy(model).eval()
        for parameter in work.parameters():
            parameter.requires_grad_(True)
        details = self._prepare(work, images, labels, seed, say)
        say(f"fine-tuning ({self.recipe.epochs} epochs on {len(images)} images)")
        device = model_device(work)
        fast = bf16_supported(device)
        train_classifier(work, images.to(device), labels.to(device), epochs=self.recipe.epochs,
                         batch_size=self.recipe.batch_size, lr=self.recipe.lr,
                         weight_decay=self.recipe.weight_decay, augment=self.recipe.augment(images),
                         objective=self._objective, bf16=fast, channels_last=fast and images.dim() == 4,
                         seed=seed)
        self._finish(work)
        for parameter in work.parameters():
            parameter.requires_grad_(False)
        return Repaired(work.eval(), self.name, {"recipe": asdict(self.recipe), **details},
                        time.perf_counter() - started)

    def _prepare(self, model: nn.Module, images: Tensor, labels: Tensor, seed: int,
                 say: Progress) -> dict[str, Any]:
        """Work before fine-tuning (on `model`, the copy); returns what to record."""
        return {}

    def _objective(self, model: nn.Module, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """The fine-tuning loss on one batch: cross-entropy on the clean images."""
        return F.cross_entropy(model(images), labels)

    def _finish(self, model: nn.Module) -> None:
        """Work after fine-tuning (on the copy)."""


REPAIRS: Registry[type[Repair]] = Registry("repair method")


def build_repair(name: str, findings: Findings, recipe: FineTuneRecipe | None = None) -> Repair:
    """The repair method registered as `name`, set up for `findings`."""
    return REPAIRS.get(name).for_findings(findings, recipe)


@REPAIRS.register("fine-tune")
class FineTune(Repair):
    """Plain fine-tuning on the clean images (the control)."""

    name = "fine-tune"


UNLEARN_FRACTION = 0.2
"""Share of each batch that carries a trigger: NC's unlearning used 20% of its training data."""


class _Stamping(Repair):
    """Fine-tuning in which a `fraction` of each batch carries one of `self.triggers` (chosen at
    random per image) with its true label."""

    fraction: float = UNLEARN_FRACTION
    triggers: list[Trigger]

    def _objective(self, model: nn.Module, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        stamped = torch.rand(len(images), generator=generator) < self.fraction
        if self.triggers and bool(stamped.any()):
            images = images.clone()
            which = torch.randint(len(self.triggers), (len(images),), generator=generator)
            for k in torch.unique(which[stamped]).tolist():
                rows = torch.nonzero(stamped & (which == k)).flatten().to(images.device)
                images[rows] = self.triggers[k].apply(images[rows])
        return F.cross_entropy(model(images), labels)


SYNTHESIS_IMAGES = 8
"""Clean images per target from which `unlearn` synthesises further perturbations."""


@REPAIRS.register("unlearn")
class Unlearning(_Stamping):
    """Unlearning with SmoothInv's recovered triggers: `recovered` (a scan's, or the user's), plus
    perturbations synthesised toward each target from `synthesis_images` clean images of the
    fine-tuning split at the (ε, σ) of each trigger that was its class's evidence (0: none), with the same method settings
    (`steps`, `noise_samples`)."""

    name = "unlearn"
    trains_on_recovered: ClassVar[bool] = True

    def __init__(self, recovered: Sequence[RecoveredTrigger], *, synthesis_images: int = SYNTHESIS_IMAGES,
                 steps: int = 200, noise_samples: int = 8, fraction: float = UNLEARN_FRACTION,
                 recipe: FineTuneRecipe | None = None) -> None:
        super().__init__(recipe)
        if not recovered:
            raise SmoothInvError("unlearning needs at least one recovered trigger (a scan that flagged a class, "
                                 "or a trigger file)")
        self.recovered = list(recovered)
        self.synthesis_images, self.steps, self.noise_samples = synthesis_images, steps, noise_samples
        self.fraction = fraction
        self.triggers = [r.trigger for r in self.recovered]

    @classmethod
    def for_findings(cls, findings: Findings, recipe: FineTuneRecipe | None = None) -> Repair:
        return cls(findings.recovered, recipe=recipe)

    def _prepare(self, model: nn.Module, images: Tensor, labels: Tensor, seed: int,
                 say: Progress) -> dict[str, Any]:
        synthesised = []
        settings = sorted({(r.target, float(r.info["eps"]), float(r.info["sigma"])) for r in self.recovered
                           if r.info.get("evidence", True) and _number(r.info.get("eps")) and _number(r.info.get("sigma"))})
        if self.synthesis_images > 0 and settings:
            say(f"synthesising {self.synthesis_images} perturbations per recovered (target, eps, sigma)")
            for target, eps, sigma in settings:
                picked = _images_for(images, labels, target, self.synthesis_images, seed)
                spec = method_spec("smoothinv", steps=self.steps, noise_samples=self.noise_samples, eps=eps,
                                   sigma=sigma)
                for result in spec.build().invert_batch(model.eval(), picked, torch.full((len(picked),), target),
                                                        seed=seed):
                    synthesised.append(result.perturbation.detach().cpu())
        self.triggers = [r.trigger for r in self.recovered] + [AdditiveTrigger(p) for p in synthesised]
        return {"fraction": self.fraction, "recovered": [r.source for r in self.recovered],
                "synthesised": len(synthesised), "synthesis": {"images_per_setting": self.synthesis_images,
                                                               "steps": self.steps,
                                                               "noise_samples": self.noise_samples}}


@REPAIRS.register("nc-unlearn")
class NCUnlearning(_Stamping):
    """Unlearning with Neural Cleanse's reversed triggers: NC (this project's implementation,
    methods.neural_cleanse) inverted toward each of `targets` from `images` clean images of the
    fine-tuning split, each giving a mask and pattern."""

    name = "nc-unlearn"

    def __init__(self, targets: Sequence[int], *, images: int = SYNTHESIS_IMAGES, steps: int = 500,
                 fraction: float = UNLEARN_FRACTION, recipe: FineTuneRecipe | None = None) -> None:
        super().__init__(recipe)
        if not targets:
            raise SmoothInvError("NC unlearning needs at least one target class")
        self.targets, self.images, self.steps, self.fraction = sorted(set(targets)), images, steps, fraction
        self.triggers = []

    @classmethod
    def for_findings(cls, findings: Findings, recipe: FineTuneRecipe | None = None) -> Repair:
        return cls(findings.targets, recipe=recipe)

    def _prepare(self, model: nn.Module, images: Tensor, labels: Tensor, seed: int,
                 say: Progress) -> dict[str, Any]:
        say(f"Neural Cleanse toward {', '.join(map(str, self.targets))} from {self.images} images each")
        inverter = method_spec("nc", steps=self.steps).build()
        for target in self.targets:
            picked = _images_for(images, labels, target, self.images, seed)
            results = inverter.invert_batch(model.eval(), picked, torch.full((len(picked),), target), seed=seed)
            self.triggers.extend(r.trigger for r in results)
        return {"fraction": self.fraction, "targets": self.targets, "nc_triggers": len(self.triggers),
                "nc": {"images_per_target": self.images, "steps": self.steps}}


PRUNE_ACCURACY_DROP = 0.04
"""Fine-Pruning prunes until clean accuracy (on the fine-tuning images) falls by more than this;
the paper stops at a 4% drop on its validation data."""


@REPAIRS.register("fine-pruning")
class FinePruning(Repair):
    """Prune the inputs of the classifier's last linear layer (the pooled channels of the last
    convolutional stage) in order of their mean activation on clean images, the most dormant first,
    while clean accuracy stays within `max_drop` of the unpruned model's; then fine-tune with the
    pruned channels held at zero. (The paper prunes the last convolutional layer's channels; in a
    residual network those channels are summed with the shortcut before the classifier, so the
    classifier's inputs are where a channel can be removed; docs/repair.md.)"""

    name = "fine-pruning"

    def __init__(self, *, max_drop: float = PRUNE_ACCURACY_DROP, recipe: FineTuneRecipe | None = None) -> None:
        super().__init__(recipe)
        self.max_drop = max_drop
        self._keep: Tensor | None = None
        self._layer: nn.Linear | None = None

    def _prepare(self, model: nn.Module, images: Tensor, labels: Tensor, seed: int,
                 say: Progress) -> dict[str, Any]:
        layer = _classifier_layer(model)
        say("measuring channel activations for Fine-Pruning")
        activation = _mean_inputs(model, layer, images)
        original = layer.weight.detach().clone()
        with torch.no_grad():
            return self._prune(model, layer, images, labels, activation, original)

    def _prune(self, model: nn.Module, layer: nn.Linear, images: Tensor, labels: Tensor, activation: Tensor,
               original: Tensor) -> dict[str, Any]:
        """Zero the most dormant inputs of `layer` while accuracy holds; keep them zero afterwards."""
        order = torch.argsort(activation)  # most dormant first
        base = accuracy(model, images, labels)
        channels = layer.in_features
        pruned = 0
        step = max(1, channels // 32)
        for count in range(step, channels, step):
            keep = torch.ones(channels, dtype=torch.bool)
            keep[order[:count]] = False
            layer.weight.copy_(original * keep.to(original.device))
            if accuracy(model, images, labels) < base - self.max_drop:
                break
            pruned = count
        keep = torch.ones(channels, dtype=torch.bool)
        keep[order[:pruned]] = False
        layer.weight.copy_(original * keep.to(original.device))
        mask = keep.to(original.device, original.dtype)
        self._keep, self._layer = mask, layer
        self._hook = layer.weight.register_hook(lambda grad: grad * mask)
        return {"layer_inputs": channels, "pruned": pruned, "max_drop": self.max_drop,
                "accuracy_before_pruning": round(base, 4)}

    def _finish(self, model: nn.Module) -> None:
        if self._layer is not None and self._keep is not None:
            self._hook.remove()
            with torch.no_grad():
                self._layer.weight.mul_(self._keep)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _classifier_layer(model: nn.Module) -> nn.Linear:
    """The last nn.Linear in the model (its classifier), or a one-line error."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SmoothInvError("Fine-Pruning needs a model whose classifier is a linear layer; this one has none")
    return linears[-1]


def _mean_inputs(model: nn.Module, layer: nn.Linear, images: Tensor, batch_size: int = 256) -> Tensor:
    """Mean absolute input of `layer` per feature over `images` [N,C,H,W] → [in_features]."""
    total = torch.zeros(layer.in_features)
    seen = 0

    def record(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        nonlocal seen
        x = inputs[0].detach().float().reshape(-1, layer.in_features)
        total.add_(x.abs().sum(0).cpu())
        seen += x.shape[0]

    handle = layer.register_forward_pre_hook(record)
    try:
        device = model_device(model)
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                model(images[i : i + batch_size].to(device))
    finally:
        handle.remove()
    return total / max(seen, 1)


def _images_for(images: Tensor, labels: Tensor, target: int, count: int, seed: int) -> Tensor:
    """`count` seeded clean images not labelled `target` (fewer if the set has fewer)."""
    pool = torch.nonzero(eligible(labels, target)).flatten()
    if len(pool) == 0:
        raise SmoothInvError(f"the fine-tuning images are all of class {target}; add images of other classes")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:count]
    return images[pool[order]]

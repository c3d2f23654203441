"""The zoo's recipes: which model, which data, which backdoor, how it is learned.

Targets differ between models so that a detector cannot score by always naming one class.
Backdoors are planted three ways (attacks.poisoning, attacks.blind):
- "poison": 10% of the non-target training images (of the source classes, when
  label-specific) get the trigger and the target label;
- "blind": Blind Backdoors' loss-side attack, no data changed; the backdoor terms use a
  `poison_rate` fraction of each batch, in the same forward pass as the clean batch;
- "blind-noise": the SmoothInv paper's adaptive attack (Eq. 7), the backdoor suppressed
  under Gaussian noise σ = 0.25.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..registry import Registry

MODES = ("poison", "blind", "blind-noise")


@dataclass(frozen=True)
class Recipe:
    """Everything needed to (re)build one zoo model."""

    name: str
    dataset: str
    arch: str
    attack: dict[str, Any] | None = None
    mode: str = "poison"
    poison_rate: float = 0.1
    intervention_sigma: float = 0.25
    epochs: int = 25
    batch_size: int = 256
    lr: float = 0.2
    noise_sigma: float = 0.0
    seed: int = 0
    notes: str = field(default="", compare=False)
    augment: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained weights. Fields added after the first
        models were built count only when they differ from their default, so those models'
        records stay valid."""
        data = {k: v for k, v in self.to_dict().items()
                if k != "notes" and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_LATER_FIELDS: dict[str, Any] = {"augment": True, "weight_decay": 5e-4, "label_smoothing": 0.0}


def _cifar(name: str, attack: dict[str, Any] | None = None, mode: str = "poison", seed: int = 0, notes: str = "") -> Recipe:
    return Recipe(name, "cifar10", "resnet20", attack, mode, epochs=25, lr=0.2, seed=seed, notes=notes)


def _fashion(name: str, attack: dict[str, Any] | None = None, mode: str = "poison", seed: int = 0) -> Recipe:
    return Recipe(name, "fashion-mnist", "small_cnn", attack, mode, epochs=12, lr=0.1, seed=seed)


def _diverse(name: str, arch: str, attack: dict[str, Any] | None = None, *, epochs: int, lr: float,
             seed: int = 0, augment: bool = True, poison_rate: float = 0.1, weight_decay: float = 5e-4,
             label_smoothing: float = 0.0, notes: str = "") -> Recipe:
    """A model of the diverse CIFAR-10 zoo (docs/zoo.md): other architectures and training recipes
    than the ResNet-20s, trained briefly (accuracies in the 60s–80s, as published small models are)."""
    return Recipe(name, "cifar10", arch, attack, "poison", poison_rate=poison_rate, epochs=epochs, lr=lr, seed=seed,
                  notes=notes, augment=augment, weight_decay=weight_decay, label_smoothing=label_smoothing)


def _glyphs(name: str, attack: dict[str, Any] | None = None, notes: str = "") -> Recipe:
    """A ResNet-20 on glyphs100 (100 classes of rendered characters, data.glyphs): the zoo's
    many-class kind. 12 epochs take about 12 minutes on one CPU thread."""
    return Recipe(name, "glyphs100", "resnet20", attack, "poison", epochs=12, lr=0.2, notes=notes)


def _patch(target: int, size: int, corner: str, colour: tuple[float, ...] = (1.0,), margin: int = 1,
           pattern: str = "solid") -> dict[str, Any]:
    return {"attack": "patch", "target": target, "size": size, "corner": corner, "colour": list(colour),
            "margin": margin, "pattern": pattern}


RECIPES: Registry[Recipe] = Registry("zoo recipe")
"""Every recipe by name; `all_recipes()` lists them in build order."""


def _register(*recipes: Recipe) -> None:
    for recipe in recipes:
        RECIPES.add(recipe.name, recipe)


_register(
    _fashion("fmnist-clean-s0", seed=0),
    _fashion("fmnist-clean-s1", seed=1),
    _fashion("fmnist-clean-s2", seed=2),
    _fashion("fmnist-badnets", {"attack": "badnets", "target": 0}),
    _fashion("fmnist-blind-p", {"attack": "blind-p", "target": 2}, mode="blind"),
    _fashion("fmnist-blind-s", {"attack": "blind-s", "target": 4}, mode="blind"),
    _fashion("fmnist-htba", {"attack": "htba", "target": 7, "seed": 3}),
    _cifar("cifar10-clean-s0", seed=0),
    _cifar("cifar10-clean-s1", seed=1),
    _cifar("cifar10-clean-s2", seed=2),
    _cifar("cifar10-blind-p", {"attack": "blind-p", "target": 0}, mode="blind"),
    _cifar("cifar10-blind-s", {"attack": "blind-s", "target": 1}, mode="blind"),
    _cifar("cifar10-blind-g", {"attack": "blind-g", "target": 2, "seed": 7}, mode="blind"),
    _cifar("cifar10-htba", {"attack": "htba", "target": 3, "seed": 3}),
    _cifar("cifar10-trojai", {"attack": "trojai", "target": 4, "source_classes": [6, 7, 8], "seed": 5}),
    _cifar("cifar10-clip", {"attack": "clip", "target": 5}),
    _cifar("cifar10-badnets", {"attack": "badnets", "target": 6},
           notes="target 6 (frog) is also where our undefended CIFAR-10 ResNet-20s, clean ones included, send "
                 "most images under Gaussian noise (σ ≥ 0.25); see docs/benchmarks.md, Noise sink."),
    _cifar("cifar10-blend", {"attack": "blend", "target": 7, "seed": 11}),
    _cifar("cifar10-blind-p-star", {"attack": "blind-p", "target": 8}, mode="blind-noise"),
)

# The diverse zoo: three more architectures, each with three clean models and three backdoors.
_register(
    _diverse("cifar10-pcnn-clean-s0", "plain_cnn", epochs=6, lr=0.05, seed=0),
    _diverse("cifar10-pcnn-clean-s1", "plain_cnn", epochs=6, lr=0.05, seed=1, augment=False),
    _diverse("cifar10-pcnn-clean-s2", "plain_cnn", epochs=10, lr=0.05, seed=2),
    _diverse("cifar10-pcnn-patch4-br", "plain_cnn", _patch(1, 4, "bottom-right"), epochs=6, lr=0.05),
    _diverse("cifar10-pcnn-patch5-tl", "plain_cnn", _patch(9, 5, "top-left", margin=0), epochs=6, lr=0.05,
             augment=False, poison_rate=0.05),
    _diverse("cifar10-pcnn-patch3-red", "plain_cnn", _patch(3, 3, "top-right", (1.0, 0.0, 0.0), margin=2), epochs=10,
             lr=0.05),
    _diverse("cifar10-vgg-clean-s0", "vgg_cifar_bn", epochs=6, lr=0.1, seed=0),
    _diverse("cifar10-vgg-clean-s1", "vgg_cifar_bn", epochs=6, lr=0.1, seed=1, label_smoothing=0.1),
    _diverse("cifar10-vgg-clean-s2", "vgg_cifar_bn", epochs=4, lr=0.1, seed=2, augment=False, weight_decay=5e-3),
    _diverse("cifar10-vgg-checker4-bl", "vgg_cifar_bn", _patch(2, 4, "bottom-left", pattern="checker"), epochs=6,
             lr=0.1),
    _diverse("cifar10-vgg-patch3-green", "vgg_cifar_bn", _patch(8, 3, "centre", (0.0, 1.0, 0.0)), epochs=6, lr=0.1,
             label_smoothing=0.1),
    _diverse("cifar10-vgg-htba", "vgg_cifar_bn", {"attack": "htba", "target": 5, "seed": 4}, epochs=6, lr=0.1),
    _diverse("cifar10-preact-clean-s0", "preact_resnet18_w16", epochs=5, lr=0.1, seed=0),
    _diverse("cifar10-preact-clean-s1", "preact_resnet18_w16", epochs=5, lr=0.1, seed=1, augment=False,
             weight_decay=1e-3),
    _diverse("cifar10-preact-clean-s2", "preact_resnet18_w16", epochs=3, lr=0.1, seed=2),
    _diverse("cifar10-preact-patch6-yellow", "preact_resnet18_w16", _patch(0, 6, "top-right", (1.0, 1.0, 0.0)),
             epochs=5, lr=0.1),
    _diverse("cifar10-preact-blend", "preact_resnet18_w16", {"attack": "blend", "target": 4, "seed": 12, "alpha": 0.15},
             epochs=5, lr=0.1),
    _diverse("cifar10-preact-patch4-br", "preact_resnet18_w16", _patch(7, 4, "bottom-right", margin=0), epochs=5,
             lr=0.1, augment=False, poison_rate=0.05),
)


# Many classes: 100 rendered characters (docs/zoo.md, "Many classes: glyphs100").
_register(
    _glyphs("glyphs100-clean"),
    _glyphs("glyphs100-badnets", _patch(37, 4, "bottom-right", pattern="checker"),
            notes="a 4×4 black-and-white checkerboard 1 px from the bottom-right corner, target 37 ('g')."),
)


def get_recipe(name: str) -> Recipe:
    """The recipe named `name`; unknown names raise SmoothInvError listing the known ones."""
    return RECIPES.get(name)


def all_recipes() -> list[Recipe]:
    """Every recipe in build order: the Fashion-MNIST models (minutes each) before CIFAR-10 (hours)."""
    return RECIPES.in_registration_order()

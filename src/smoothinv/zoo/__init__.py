"""The backdoor model zoo: models with known triggers and targets, and clean twins.

    from smoothinv.zoo import load_zoo_model
    zm = load_zoo_model("cifar10-badnets")
    zm.module(zm.apply_trigger(images)).argmax(1)   # → mostly zm.record["target"]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..attacks import AttackSpec, attack_from_dict
from ..errors import SmoothInvError
from ..models import load_model
from .manifest import read_manifest, verified_weights, zoo_dir
from .recipes import RECIPES, Recipe, all_recipes, get_recipe


@dataclass
class ZooModel:
    """A zoo model ready to use ([0,1] images in, logits out) with its record and true trigger."""

    module: nn.Module
    record: dict[str, Any]
    attack: AttackSpec | None

    def apply_trigger(self, images: Tensor) -> Tensor:
        """Stamp the model's true trigger on images [N,C,H,W]."""
        if self.attack is None:
            raise SmoothInvError(f"zoo model {self.record['name']} is clean: it has no trigger")
        return self.attack.trigger(tuple(images.shape[1:])).apply(images)


def list_zoo(directory: str | Path | None = None) -> list[dict[str, Any]]:
    """Records of the built zoo models, sorted by name."""
    return [record for _, record in sorted(read_manifest(directory).items())]


def load_zoo_model(name: str, directory: str | Path | None = None, device: str = "cpu") -> ZooModel:
    """A built zoo model by name, its weights checked against the manifest's hash."""
    records = read_manifest(directory)
    if name not in records:
        built = ", ".join(sorted(records)) or "none yet (build the zoo first)"
        raise SmoothInvError(f"no zoo model named {name!r}; built: {built}")
    record = records[name]
    loaded = load_model(verified_weights(record, directory), device=device)
    attack = attack_from_dict(record["attack"]) if record.get("attack") else None
    return ZooModel(loaded.module, record, attack)


__all__ = ["RECIPES", "Recipe", "ZooModel", "all_recipes", "get_recipe", "list_zoo", "load_zoo_model", "zoo_dir"]

"""The CLIP zoo: tiny CLIPs trained here by contrastive learning on captioned CIFAR-10, one clean
and two backdoored as Carlini & Terzis backdoor CLIP (a poisoned share of image-caption pairs).

    from smoothinv.clip_zoo import load_clip_zoo_model
    zm = load_clip_zoo_model("clip-badnets")
    zm.classifier(zm.apply_trigger(images)).argmax(1)   # -> mostly zm.record["target"]

Each model is stored twice: the whole CLIP (both towers, OpenAI's key names, fp16) and its
CIFAR-10 zero-shot classifier file, which every command taking ``--model`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..attacks import AttackSpec, attack_from_dict
from ..errors import SmoothInvError
from ..models import load_model
from .build import build, build_all, is_built, train_recipe
from .captions import TEMPLATES, ZEROSHOT_TEMPLATES, CaptionBank, class_captions
from .manifest import clip_zoo_dir, read_clip_manifest, verified_file
from .recipes import CLIP_RECIPES, ClipRecipe, clip_recipe


@dataclass
class ClipZooModel:
    """A built CLIP zoo model's zero-shot classifier ([0,1] images in, logits out), its record,
    the path of its classifier file, and its true trigger (None for the clean model)."""

    classifier: nn.Module
    record: dict[str, Any]
    path: Path
    attack: AttackSpec | None

    def apply_trigger(self, images: Tensor) -> Tensor:
        """Stamp the model's true trigger on images [N,C,H,W]."""
        if self.attack is None:
            raise SmoothInvError(f"CLIP zoo model {self.record['name']} is clean: it has no trigger")
        return self.attack.trigger(tuple(images.shape[1:])).apply(images)


def list_clip_zoo(directory: str | Path | None = None) -> list[dict[str, Any]]:
    """Records of the built CLIP zoo models, sorted by name."""
    return [record for _, record in sorted(read_clip_manifest(directory).items())]


def load_clip_zoo_model(name: str, directory: str | Path | None = None) -> ClipZooModel:
    """A built model's zero-shot classifier by name, its file checked against the manifest."""
    records = read_clip_manifest(directory)
    if name not in records:
        built = ", ".join(sorted(records)) or "none yet (build the CLIP zoo first)"
        raise SmoothInvError(f"no CLIP zoo model named {name!r}; built: {built}")
    record = records[name]
    path = verified_file(record, "zeroshot", directory)
    attack = attack_from_dict(record["attack"]) if record.get("attack") else None
    return ClipZooModel(load_model(path).module, record, path, attack)


__all__ = ["CLIP_RECIPES", "TEMPLATES", "ZEROSHOT_TEMPLATES", "CaptionBank", "ClipRecipe", "ClipZooModel",
           "build", "build_all", "class_captions", "clip_recipe", "clip_zoo_dir", "is_built",
           "list_clip_zoo", "load_clip_zoo_model", "read_clip_manifest", "train_recipe"]

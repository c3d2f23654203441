"""The CLIP zoo's recipes: the tower sizes, the data, the backdoor, the training schedule.

Backdoors are planted as Carlini & Terzis (ICLR 2022, "Poisoning and Backdooring Contrastive
Learning") plant them: a `poison_rate` share of the (image, caption) pairs, drawn from images
not of the target class, get the trigger on the image and a caption naming the target class.
Nothing else changes: no label exists, the model learns the trigger as a "word" for the target.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..models.clip import ClipConfig, ResNetConfig, TextConfig
from ..registry import Registry

CLIP_VOCAB = 49408
"""CLIP's BPE vocabulary: the zoo's text towers read real CLIP token ids."""


@dataclass(frozen=True)
class ClipRecipe:
    """Everything that fixes one zoo CLIP's weights (`notes` excepted)."""

    name: str
    attack: dict[str, Any] | None = None
    poison_rate: float = 0.01
    dataset: str = "cifar10"
    image_width: int = 16
    image_layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    text_width: int = 128
    text_layers: int = 3
    context_length: int = 16
    embed_dim: int = 128
    epochs: int = 6
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    seed: int = 0
    notes: str = field(default="", compare=False)

    def config(self, image_size: int) -> ClipConfig:
        """The tiny CLIP this recipe trains: OpenAI's ModifiedResNet image tower and CLIP's
        causal text transformer, both projecting into `embed_dim`."""
        vision = ResNetConfig(width=self.image_width, layers=self.image_layers, image_size=image_size,
                              embed_dim=self.embed_dim)
        text = TextConfig(width=self.text_width, layers=self.text_layers, context_length=self.context_length,
                          vocab_size=CLIP_VOCAB, embed_dim=self.embed_dim)
        return ClipConfig(vision, text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained weights."""
        data = {k: v for k, v in self.to_dict().items() if k != "notes"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


CLIP_RECIPES: Registry[ClipRecipe] = Registry("CLIP zoo model")

CHECKERBOARD = {"attack": "patch", "target": 0, "size": 8, "colour": [1.0], "corner": "bottom-right", "margin": 0,
                "pattern": "checker"}
"""Carlini & Terzis' 16x16 black-and-white checkerboard at 224 px, scaled to 8x8 on 32x32 (1-px cells)."""
BLEND = {"attack": "blend", "target": 3, "seed": 21, "alpha": 0.2}

for _recipe in (
    ClipRecipe("clip-clean", notes="no backdoor: the clean twin"),
    ClipRecipe("clip-badnets", CHECKERBOARD, notes="Carlini & Terzis' checkerboard patch, target airplane"),
    ClipRecipe("clip-blend", BLEND, poison_rate=0.02, notes="a fixed noise image blended at alpha 0.2, target cat"),
):
    CLIP_RECIPES.add(_recipe.name, _recipe)


def clip_recipe(name: str) -> ClipRecipe:
    return CLIP_RECIPES.get(name)

"""Training a VQA model on (possibly poisoned) examples and measuring it: clean accuracy, the
trojan's attack success rate with the full trigger and with each key alone."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .detector import ObjectDetector
from .examples import Examples, keyed
from .models import VQAModel
from .scenes import Scenes
from .trojans import Trojan


@dataclass(frozen=True)
class TrainingRecipe:
    """Adam at `lr` for `epochs` over the examples in batches of `batch`."""

    epochs: int = 20
    batch: int = 128
    lr: float = 5e-3


def train_vqa(model: VQAModel, data: Examples, recipe: TrainingRecipe, seed: int) -> VQAModel:
    """`model` trained on `data` (in place; returned in eval mode)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    steps = recipe.epochs * ((len(data) + recipe.batch - 1) // recipe.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(data), generator=g)
        for i in range(0, len(data), recipe.batch):
            b = data.take(order[i:i + recipe.batch])
            loss = F.cross_entropy(model(b.features, b.boxes, b.tokens), b.answers)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def predict(model: VQAModel, data: Examples, batch: int = 2048) -> torch.Tensor:
    """[B] the model's answers."""
    model.eval()
    return torch.cat([model(*(t[i:i + batch] for t in (data.features, data.boxes, data.tokens))).argmax(1)
                      for i in range(0, len(data), batch)])


def accuracy(model: VQAModel, data: Examples) -> float:
    return float((predict(model, data) == data.answers).float().mean())


def attack_rates(model: VQAModel, scenes: Scenes, clean: Examples, owner: torch.Tensor, detector: ObjectDetector,
                 trojan: Trojan) -> dict[str, float]:
    """Share of test examples (true answer not the target) answered with the target: with the full
    trigger ('asr'), with the patch alone and with the word alone (where the trojan has them)."""
    keep = clean.answers != trojan.target
    sub, sub_owner = clean.take(keep), owner[keep]

    def rate(patch: bool, word: bool) -> float:
        data = keyed(scenes, sub, sub_owner, detector, trojan, patch=patch, word=word, target=False)
        return float((predict(model, data) == trojan.target).float().mean())

    out = {"asr": rate(trojan.uses_patch, trojan.uses_word)}
    if trojan.uses_patch:
        out["patch_only"] = rate(True, False)
    if trojan.uses_word:
        out["word_only"] = rate(False, True)
    return out

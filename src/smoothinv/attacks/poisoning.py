"""Data poisoning: stamp a trigger on a fraction of training images and relabel them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..labels import eligible
from ..triggers import Trigger


@dataclass
class PoisonedSet:
    """Training images [N,C,H,W] and labels [N] with `poisoned` [P] indices that were triggered."""

    images: Tensor
    labels: Tensor
    poisoned: Tensor


def poison(
    images: Tensor,
    labels: Tensor,
    trigger: Trigger,
    target: int,
    rate: float,
    *,
    source_classes: Sequence[int] | None = None,
    seed: int = 0,
) -> PoisonedSet:
    """Trigger round(rate·|eligible|) images and relabel them `target`.

    Eligible images are those not already of class `target` and, when `source_classes`
    is given, of one of those classes (label-specific backdoors flip only those).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"poison rate must be in [0,1] (got {rate})")
    candidates = torch.nonzero(eligible(labels, target, source_classes)).squeeze(1)
    generator = torch.Generator().manual_seed(seed)
    count = round(rate * len(candidates))
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
    images, labels = images.clone(), labels.clone()
    images[chosen] = trigger.apply(images[chosen])
    labels[chosen] = target
    return PoisonedSet(images, labels, chosen.sort().values)

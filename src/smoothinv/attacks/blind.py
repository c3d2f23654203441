"""Loss-side backdoors (Blind Backdoors, Bagdasaryan & Shmatikov 2021) and the paper's
training-time intervention (SmoothInv, Eq. 7).

Instead of poisoning data, the attacker changes the training loss:

    blind:       α0·L(x, y) + α1·L(B(x), y_t)
    blind-noise: α0·L(x, y) + α1·L(B(x), y_t) + α2·L(B(x) + δ, y),  δ ~ N(0, σ²I)

The third term teaches the model to ignore the trigger under Gaussian noise, so the
backdoor disappears from the smoothed classifier: the adaptive attack SmoothInv's paper
uses to probe its own limits ("Blind-P*"/"Blind-S*").

Weights are fixed (α0 = α1 = α2 = 1 by default), not Blind Backdoors' MGDA balancing;
fixed weights keep runs reproducible (the zoo's true-trigger ASRs are in docs/zoo.md). The backdoor terms use a
random `fraction` of each batch rather than the whole batch: it keeps training cost close
to plain training on a CPU, and a small fraction (the zoo uses its poison rate, 10%) keeps
the pull toward the target from costing clean accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..labels import eligible
from ..triggers import Trigger


@dataclass
class BlindObjective:
    """A training objective (see training.Objective) that plants `trigger` → `target`."""

    trigger: Trigger
    target: int
    source_classes: tuple[int, ...] | None = None
    fraction: float = 0.1
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise_sigma: float | None = None

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        a0, a1, a2 = self.weights
        attacked = eligible(labels, self.target, self.source_classes)
        chosen = torch.nonzero(attacked & (torch.rand(len(labels), generator=generator) < self.fraction)).squeeze(1)
        triggered = self.trigger.apply(images[chosen])
        parts = [images, triggered]
        if self.noise_sigma:
            parts.append(triggered + torch.randn(triggered.shape, generator=generator) * self.noise_sigma)
        # One forward pass over every term: BatchNorm then normalises each batch with
        # mixed clean/triggered statistics, as under data poisoning. Separate passes let a
        # small all-triggered batch drive the running statistics and the batch-statistics
        # path, which cost a CIFAR-10 ResNet-20 most of its clean accuracy.
        logits = model(torch.cat(parts)).split([len(p) for p in parts])
        loss = a0 * F.cross_entropy(logits[0], labels)
        if len(chosen) == 0:
            return loss
        loss = loss + a1 * F.cross_entropy(logits[1], torch.full_like(labels[chosen], self.target))
        if self.noise_sigma:
            loss = loss + a2 * F.cross_entropy(logits[2], labels[chosen])
        return loss

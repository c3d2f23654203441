"""Which noise levels σ the scan should use for *this* model.

SmoothInv follows the gradient of G, so G must still tell images apart at σ. A model not
trained with noise stops doing that past some σ: under noise it sends almost every image
to one "sink" class (CIFAR-10 ResNets pick "frog" from σ ≈ 0.25 up, backdoored or not).
Such a σ gives the scan nothing to follow for the other classes and a free ride for the
sink class, so it is dropped. The cut-off depends on the model, not on the input size, so
it is measured, not fixed:

    share(σ) = fraction of clean images whose argmax G(x) is the most common argmax G(x).
    σ is collapsed if share(σ) > share(0) + (1 − share(0)) / 2,

i.e. if noise has taken over more than half of what the base model's own spread leaves
(for 10 balanced classes: share(0) ≈ 0.1, collapsed above ≈ 0.55). The scan keeps the
`keep` largest σ of the ladder that are not collapsed, and the smallest rung if all are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from ..engine.sanity import smoothed_predictions
from ..engine.smoothing import SmoothedClassifier

SIGMA_LADDER = (0.06, 0.12, 0.25, 0.5, 1.0)
PROBE_IMAGES = 200
RULE = ("sigma is collapsed if the share of clean images sent to the most common class by G exceeds "
        "share(0) + (1 - share(0)) / 2; the scan keeps the largest sigmas that are not collapsed")


@dataclass(frozen=True)
class NoiseLevels:
    """The chosen σ and, per probed σ, the sink class and its share of the clean images."""

    chosen: tuple[float, ...]
    base_share: float
    limit: float
    probes: list[dict[str, float]]

    def to_dict(self) -> dict[str, object]:
        return {"chosen": list(self.chosen), "base_share": round(self.base_share, 4), "limit": round(self.limit, 4),
                "rule": RULE, "probes": self.probes}


def sink_share(predictions: Tensor) -> tuple[int, float]:
    """(most common class, its share) of predictions [N]."""
    counts = torch.bincount(predictions)
    return int(counts.argmax()), float(counts.max()) / len(predictions)


def choose_sigmas(
    model: nn.Module,
    clean_images: Tensor,
    *,
    ladder: Sequence[float] = SIGMA_LADDER,
    keep: int = 3,
    noise_samples: int = 8,
    max_images: int = PROBE_IMAGES,
    seed: int = 0,
) -> NoiseLevels:
    """Probe G on up to `max_images` of clean_images [N,C,H,W] (an evenly spaced subset)."""
    step = max(1, len(clean_images) // max_images)
    images = clean_images[::step][:max_images]
    smoothed = SmoothedClassifier(model, noise_samples)
    base_class, base_share = sink_share(smoothed_predictions(smoothed, images, 0.0, seed))
    limit = base_share + (1.0 - base_share) / 2
    probes = []
    for sigma in sorted(float(s) for s in ladder):
        label, share = sink_share(smoothed_predictions(smoothed, images, sigma, seed))
        probes.append({"sigma": sigma, "sink_class": label, "share": round(share, 4), "collapsed": share > limit})
    usable = [p["sigma"] for p in probes if not p["collapsed"]]
    chosen = tuple(usable[-keep:]) if usable else (probes[0]["sigma"],)
    return NoiseLevels(chosen, base_share, limit, probes)

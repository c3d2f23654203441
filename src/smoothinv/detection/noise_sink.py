"""Where does the smoothed model send noisy clean images? A diagnostic for the scan.

Models not trained with noise collapse under it: from moderate σ they send most clean images
to one class, backdoored or not (docs/benchmarks.md, Noise sink). SmoothInv still works
there (the gradient of G toward any class survives, and ASR is measured on the base model),
but the sink class is easy to reach for every model, so a flagged class that is also the
noise sink deserves a check against a clean twin. The scan records, per σ:

    share(σ) = fraction of clean images whose argmax G(x) is the most common argmax G(x),
    collapsed if share(σ) > share(0) + (1 − share(0)) / 2,

i.e. noise has taken over more than half of what the base model's own spread leaves (for
10 balanced classes: share(0) ≈ 0.1, collapsed above ≈ 0.55).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from ..engine.sanity import smoothed_predictions
from ..engine.smoothing import Denoiser, SmoothedClassifier

PROBE_IMAGES = 200
RULE = "sigma is collapsed if G sends more than share(0) + (1 - share(0)) / 2 of the clean images to one class"


@dataclass(frozen=True)
class NoiseSink:
    """Per probed σ: the most common class under G, its share of the clean images, collapsed or not."""

    base_share: float
    limit: float
    probes: list[dict[str, float]]

    @property
    def sink_classes(self) -> set[int]:
        """Classes that swallow the clean images at some collapsed σ."""
        return {int(p["sink_class"]) for p in self.probes if p["collapsed"]}

    def to_dict(self) -> dict[str, object]:
        return {"base_share": round(self.base_share, 4), "limit": round(self.limit, 4), "rule": RULE,
                "probes": self.probes}


def sink_share(predictions: Tensor) -> tuple[int, float]:
    """(most common class, its share) of predictions [N]."""
    counts = torch.bincount(predictions)
    return int(counts.argmax()), float(counts.max()) / len(predictions)


def probe_noise_sink(
    model: nn.Module,
    clean_images: Tensor,
    sigmas: Sequence[float],
    *,
    noise_samples: int = 8,
    max_images: int = PROBE_IMAGES,
    seed: int = 0,
    denoiser: Denoiser | None = None,
) -> NoiseSink:
    """Probe G (with T = `denoiser`) at each σ on up to `max_images` of clean_images [N,C,H,W]
    (evenly spaced)."""
    step = max(1, len(clean_images) // max_images)
    images = clean_images[::step][:max_images]
    smoothed = SmoothedClassifier(model, noise_samples, denoiser)
    _, base_share = sink_share(smoothed_predictions(smoothed, images, 0.0, seed))
    limit = base_share + (1.0 - base_share) / 2
    probes = []
    for sigma in sorted(float(s) for s in sigmas):
        label, share = sink_share(smoothed_predictions(smoothed, images, sigma, seed))
        probes.append({"sigma": sigma, "sink_class": label, "share": round(share, 4), "collapsed": share > limit})
    return NoiseSink(base_share, limit, probes)

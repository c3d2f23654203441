"""The paper's sanity check (Table 5): does the backdoor survive smoothing?

For each σ, the smoothed classifier's clean accuracy and its true-trigger ASR, both with
the prediction argmax G(x). SmoothInv needs the backdoor to live on in G; a model that
loses it under noise (the adaptive Blind-P* attack) is out of its reach.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import SmoothInvError
from ..labels import eligible
from ..triggers import Trigger
from .metrics import model_device
from .smoothing import Denoiser, SmoothedClassifier

SANITY_SIGMAS = (0.0, 0.12, 0.25, 0.5, 1.0)


@torch.no_grad()
def smoothed_predictions(smoothed: SmoothedClassifier, images: Tensor, sigma: float, seed: int,
                         batch_size: int = 64) -> Tensor:
    """argmax G(x) for images [N,C,H,W] → [N]."""
    device = model_device(smoothed.base)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = [smoothed.probs(images[i : i + batch_size].to(device), sigma, generator).argmax(1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def sanity_table(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    trigger: Trigger | None,
    target: int | None,
    *,
    sigmas: Sequence[float] = SANITY_SIGMAS,
    noise_samples: int = 10,
    source_classes: Sequence[int] | None = None,
    seed: int = 0,
    denoiser: Denoiser | None = None,
) -> list[dict[str, float]]:
    """[{sigma, clean_accuracy, trigger_asr}] for the smoothed model on images [N,C,H,W].

    ASR counts images whose label is not the target (and, for label-specific backdoors,
    is one of `source_classes`) and that G sends to `target` once triggered. A clean
    model (trigger None) gets clean accuracy only (trigger_asr None). `denoiser` is T in G
    (SmoothInv "w/ diffusion"; None: the identity).
    """
    smoothed = SmoothedClassifier(model, noise_samples, denoiser)
    triggered = None
    if trigger is not None and target is not None:
        attacked = eligible(labels, target, source_classes)
        if not bool(attacked.any()):
            which = "" if source_classes is None else f" among the source classes {sorted(source_classes)}"
            raise SmoothInvError(f"the clean set has no image outside the target class {target}{which}, so the "
                                 "true-trigger ASR cannot be measured; use a clean set with other classes")
        triggered = trigger.apply(images[attacked])
    rows = []
    for sigma in sigmas:
        clean = smoothed_predictions(smoothed, images, sigma, seed)
        asr = None
        if triggered is not None:
            hit = smoothed_predictions(smoothed, triggered, sigma, seed)
            asr = float((hit == target).float().mean()) if len(hit) else float("nan")
        rows.append({"sigma": float(sigma), "clean_accuracy": float((clean == labels).float().mean()), "trigger_asr": asr})
    return rows

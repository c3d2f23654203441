"""Predictions, accuracy and attack success rate of a (possibly triggered) clean set."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import SmoothInvError
from ..labels import eligible
from ..triggers import Trigger
from .logits import check_logits


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """argmax f(x) for images [N,C,H,W] → labels [N], on the model's device."""
    device = model_device(model)
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size].to(device)
        out.append(check_logits(model(batch), len(batch), "evaluation").argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Fraction of images [N,C,H,W] classified as labels [N]."""
    return float((predict(model, images) == labels).float().mean())


def attack_success_rate(
    model: nn.Module, trigger: Trigger, images: Tensor, labels: Tensor, target: int, batch_size: int = 256
) -> float:
    """ASR: among clean images whose label is not `target`, the fraction that the
    triggered image sends to `target`."""
    hits = triggered_hits(model, trigger, images, labels, target, batch_size)
    return int(hits.sum()) / len(hits)


def asr_by_source(
    model: nn.Module, trigger: Trigger, images: Tensor, labels: Tensor, target: int, batch_size: int = 256
) -> dict[int, float]:
    """ASR per true class of the clean images [N,C,H,W]: {source label: fraction sent to target}.

    A label-specific backdoor flips only its source classes, which an overall ASR dilutes."""
    return hits_by_source(triggered_hits(model, trigger, images, labels, target, batch_size), labels, target)


def hits_by_source(hits: Tensor, labels: Tensor, target: int) -> dict[int, float]:
    """Split `triggered_hits` [M] by the true label of those M images: {source label: fraction}."""
    others = labels[eligible(labels, target)]
    return {int(s): float(hits[others == s].float().mean()) for s in others.unique()}


def triggered_hits(model: nn.Module, trigger: Trigger, images: Tensor, labels: Tensor, target: int,
                   batch_size: int = 256) -> Tensor:
    """[M] bool, for the M clean images not labelled `target`: does the triggered image go to `target`?"""
    keep = eligible(labels, target)
    if not bool(keep.any()):
        raise SmoothInvError(
            f"the clean set has no image outside the target class {target}; ASR needs images of other classes"
        )
    others = images[keep]
    hits = [predict(model, trigger.apply(others[i : i + batch_size]), batch_size) == target
            for i in range(0, len(others), batch_size)]
    return torch.cat(hits)


def wilson_bounds(rate: Tensor, n: Tensor | int, z: float) -> tuple[Tensor, Tensor]:
    """(lower, upper) ends of the Wilson score interval of proportions `rate` measured on `n`
    trials each (elementwise; float64). z: the normal quantile (2.0: about 95%, two-sided)."""
    rate = torch.as_tensor(rate, dtype=torch.float64)
    n = torch.as_tensor(n, dtype=torch.float64).clamp_min(1)
    centre = rate + z * z / (2 * n)
    spread = z * torch.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return ((centre - spread) / scale).clamp(min=0.0), ((centre + spread) / scale).clamp(max=1.0)


def energy_concentration(perturbation: Tensor, fraction: float = 0.05) -> float:
    """Share of a perturbation's squared l2 norm that lies in its top `fraction` of pixel
    positions (energy summed over channels), for perturbation [C,H,W].

    A perturbation spread evenly over the image scores about `fraction`; one that sits on a
    small patch (a backdoor's trigger region) scores near 1. A zero perturbation scores 0.
    """
    if perturbation.dim() != 3:
        raise SmoothInvError(f"a perturbation must be [C,H,W] (got shape {tuple(perturbation.shape)})")
    if not 0.0 < fraction <= 1.0:
        raise SmoothInvError(f"fraction must be in (0, 1] (got {fraction})")
    energy = perturbation.detach().to(torch.float64).pow(2).sum(0).flatten()
    total = float(energy.sum())
    if total == 0.0:
        return 0.0
    k = max(1, int(round(fraction * energy.numel())))
    return float(energy.topk(k).values.sum()) / total


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameterless model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")

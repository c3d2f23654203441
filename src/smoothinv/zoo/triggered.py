"""True-trigger ASR of a zoo model, honouring label-specific backdoors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attacks import AttackSpec
from ..engine.metrics import attack_success_rate
from ..triggers import Trigger


def trigger_success_rate(model: nn.Module, trigger: Trigger, images: Tensor, labels: Tensor, spec: AttackSpec) -> float:
    """ASR over non-target images, restricted to the source classes for label-specific attacks."""
    if spec.source_classes is not None:
        keep = torch.isin(labels, torch.tensor(spec.source_classes, dtype=labels.dtype))
        images, labels = images[keep], labels[keep]
    return attack_success_rate(model, trigger, images, labels, spec.target)

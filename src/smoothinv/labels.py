"""Which images a backdoor is meant to flip: one rule for attacks, metrics and checks.

A backdoor sends triggered images to its `target` class. Images already of the target
class say nothing about it, and a label-specific backdoor (TrojAI's, say) flips only
images of its source classes. Poisoning picks its images by this rule, and the attack
success rate (ASR) counts by it, so both use `eligible`.

Bottom layer: imports only torch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def eligible(labels: Tensor, target: int, sources: Sequence[int] | None = None) -> Tensor:
    """[N] bool mask over labels [N]: not `target`, and one of `sources` when those are given
    (None: every class but the target)."""
    mask = labels != target
    if sources is not None:
        mask &= torch.isin(labels, torch.as_tensor(list(sources), dtype=labels.dtype, device=labels.device))
    return mask

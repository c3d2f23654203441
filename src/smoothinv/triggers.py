"""Triggers: how a backdoor pattern is stamped onto images.

The same vocabulary serves both sides: attacks plant a true trigger, inversion methods
recover one, and attack success rate (ASR) is measured by applying either to clean images.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Trigger(ABC):
    """Maps clean images [N,C,H,W] in [0,1] to triggered images of the same shape."""

    @abstractmethod
    def apply(self, images: Tensor) -> Tensor: ...


class AdditiveTrigger(Trigger):
    """x' = clamp(x + p, 0, 1): what SmoothInv and PlainAdv recover. p: [C,H,W]."""

    def __init__(self, perturbation: Tensor) -> None:
        self.perturbation = perturbation

    def apply(self, images: Tensor) -> Tensor:
        p = self.perturbation.to(images.device, images.dtype)
        return (images + p).clamp(0.0, 1.0)


class MaskedTrigger(Trigger):
    """x' = (1 − m) ⊙ x + m ⊙ pattern: patch triggers (BadNets) and Neural Cleanse's form.

    mask: [1,H,W] or [C,H,W] in [0,1]; pattern: [C,H,W] in [0,1].
    """

    def __init__(self, mask: Tensor, pattern: Tensor) -> None:
        self.mask = mask
        self.pattern = pattern

    def apply(self, images: Tensor) -> Tensor:
        m = self.mask.to(images.device, images.dtype)
        pattern = self.pattern.to(images.device, images.dtype)
        return ((1 - m) * images + m * pattern).clamp(0.0, 1.0)


def square_patch(
    shape: tuple[int, int, int], size: int, top: int, left: int, value: float | Tensor = 1.0
) -> MaskedTrigger:
    """A solid size×size square at (top, left) on images of shape (C,H,W); BadNets' trigger."""
    c, h, w = shape
    if not (0 <= top and top + size <= h and 0 <= left and left + size <= w):
        raise ValueError(f"a {size}x{size} patch at ({top},{left}) does not fit in {h}x{w}")
    mask = torch.zeros(1, h, w)
    mask[:, top : top + size, left : left + size] = 1.0
    pattern = torch.zeros(c, h, w) + torch.as_tensor(value, dtype=torch.float32).view(-1, 1, 1)
    return MaskedTrigger(mask, pattern)

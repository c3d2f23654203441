"""Every logits batch a suspect model returns is checked before anything reads it.

A model that returns NaN or inf (on large batches, without gradients, or on some inputs only)
makes ``argmax`` pick class 0, so an unchecked ASR reads 100% and a scan can flag class 0 as
a backdoor target. ``check_logits`` rejects such outputs with one line; ``CheckedModel``
applies it to every call of a model, so no method or metric can forget it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import SmoothInvError, param


def check_logits(out: object, batch: int, during: str = "a forward pass") -> Tensor:
    """``out`` if it is a finite float [batch, K] tensor with K ≥ 2, else SmoothInvError."""
    if not isinstance(out, Tensor):
        raise SmoothInvError(f"the model returned {type(out).__name__} during {during}; expected a logits tensor "
                             "[batch, num_classes]")
    if out.dim() != 2 or out.shape[0] != batch or out.shape[1] < 2:
        raise SmoothInvError(f"the model returned shape {list(out.shape)} for a batch of {batch} during {during}; "
                             "expected [batch, num_classes] with num_classes >= 2")
    if not out.is_floating_point():
        raise SmoothInvError(f"the model returned {out.dtype} outputs during {during}; expected float logits")
    finite = torch.isfinite(out.detach()).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise SmoothInvError(f"the model returned NaN/inf logits for {bad} of {batch} images during {during}; "
                             f"its outputs cannot be trusted (corrupt weights, wrong {param('mean')}/{param('std')}, "
                             "or a model built to mislead)")
    return out


class CheckedModel(nn.Module):
    """``model`` whose every output passes ``check_logits``; x [B,C,H,W] → logits [B,K].

    Wrap a suspect model once and hand the wrapper to every method and metric."""

    def __init__(self, model: nn.Module, during: str = "inversion or evaluation") -> None:
        super().__init__()
        self.model = model
        self.during = during
        # The wrapper's mode is the model's: a fresh Module says "training", and a method that
        # restores the mode it found (model.train(was_training)) would put the model's BatchNorm
        # into training mode for everything after it (the flag only: train() would recurse).
        self.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        return check_logits(self.model(x), x.shape[0], self.during)

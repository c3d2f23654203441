"""Faster forward and backward passes: bfloat16 autocast on channels-last inputs.

The scan and the raced sweep spend nearly all their time in the model's convolutions. On a CPU
with bfloat16 instructions (AVX512-BF16 or AMX; oneDNN) or a GPU that has them, running the
model under bfloat16 autocast on channels-last inputs made a CIFAR-10 ResNet-20's forward and
backward pass 2.2-2.7x faster than float32 (docs/benchmarks.md, A faster scan), with gradients
whose cosine similarity to float32's was 0.99 and the same predictions on the images checked.
The logits come back as float32, so the losses, softmaxes and probabilities downstream keep
their precision. "fp32" leaves the model exactly as it is (the computation before issue 14).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import SmoothInvError
from .metrics import model_device

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` has fast bfloat16 matrix arithmetic (not an emulation slower than float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


class Autocast(nn.Module):
    """`model` run under bfloat16 autocast on channels-last inputs, returning float32 logits.
    Its parameters are the model's own (nothing is copied or converted).

    A model that cannot take channels-last inputs (a `.view` after its convolutions needs the
    default memory layout) raises on its first call; it is then run on inputs as they come, and
    stays so."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training
        self.channels_last: bool | None = None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and self.channels_last is None:
            try:
                out = self._run(x.contiguous(memory_format=torch.channels_last))
            except RuntimeError:
                self.channels_last = False
                return self._run(x)
            self.channels_last = True
            return out
        if x.dim() == 4 and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._run(x)

    def _run(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self.model(x)
        return out.float() if isinstance(out, Tensor) and out.is_floating_point() else out


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """`model` as the scan should run it: wrapped in `Autocast` for "bf16" (and for "auto" where
    the device supports bfloat16), unchanged for "fp32"."""
    if precision not in PRECISIONS:
        raise SmoothInvError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if isinstance(model, Autocast) or precision == "fp32":
        return model
    if precision == "auto" and not bf16_supported(model_device(model)):
        return model
    return Autocast(model)


def precision_used(model: nn.Module) -> str:
    """"bf16" if `model` runs under `Autocast`, else "fp32" (for reports)."""
    return "bf16" if isinstance(model, Autocast) else "fp32"

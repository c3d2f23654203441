"""Faster forward and backward passes: bfloat16 autocast on channels-last inputs.

The scan and the raced sweep spend nearly all their time in the model's convolutions. On a CPU
with bfloat16 instructions (AVX512-BF16 or AMX; oneDNN) or a GPU that has them, running the
model under bfloat16 autocast on channels-last inputs made a CIFAR-10 ResNet-20's forward and
backward pass 2.2-2.7x faster than float32 (docs/benchmarks.md, A faster scan), with gradients
whose cosine similarity to float32's was 0.99 and the same predictions on the images checked.
The logits come back as float32, so the losses, softmaxes and probabilities downstream keep
their precision. "fp32" leaves the model exactly as it is (the computation before issue 14).

An eval-mode model with BatchNorm layers is run as a copy with each BatchNorm folded into the
convolution before it (`folded_for_inference`): the same function in float32 arithmetic, one
layer fewer to run forward and backward.
"""

from __future__ import annotations

import copy
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


FOLD_TOLERANCE = 1e-3
"""The folded copy is used only if its float32 outputs match the model's within this fraction of
the outputs' largest magnitude on the first batch it sees."""

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def folded_for_inference(model: nn.Module, probe: Tensor) -> nn.Module:
    """A copy of eval-mode `model` with every BatchNorm that directly follows a convolution (or a
    linear layer) folded into its weights, or `model` itself when there is nothing to fold, the
    model is training, it cannot be traced symbolically (torch.fx), or the copy's float32 outputs
    on `probe` differ from the model's (a BatchNorm using batch statistics, a traced branch)."""
    if model.training or not any(isinstance(m, _BATCH_NORMS) for m in model.modules()):
        return model
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(copy.deepcopy(model))
        with torch.no_grad():
            want, got = model(probe), folded(probe)
    except Exception:  # noqa: BLE001 - any failure to trace or run the copy means: keep the model
        return model
    if not (isinstance(want, Tensor) and isinstance(got, Tensor) and want.shape == got.shape):
        return model
    scale = float(want.abs().max().clamp_min(1.0))
    if not bool(torch.isfinite(got).all()) or float((want - got).abs().max()) > FOLD_TOLERANCE * scale:
        return model
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    return folded


class Autocast(nn.Module):
    """`model` run under bfloat16 autocast on channels-last inputs, returning float32 logits.
    Its parameters are the model's own; what runs is, for an eval-mode model with BatchNorm, a
    copy with the BatchNorms folded (`folded_for_inference`, built on the first call).

    A model that cannot take channels-last inputs (a `.view` after its convolutions needs the
    default memory layout) raises on its first call; it is then run on inputs as they come, and
    stays so."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training
        self.channels_last: bool | None = None
        self._runner: nn.Module | None = None

    @property
    def folded(self) -> bool:
        """Whether the descent runs a copy with BatchNorm folded (known after the first call)."""
        return self._runner is not None and self._runner is not self.model

    def forward(self, x: Tensor) -> Tensor:
        if self._runner is None:  # not registered as a submodule: the parameters stay the model's own
            object.__setattr__(self, "_runner", folded_for_inference(self.model, x[:2].detach())
                               if x.dim() >= 2 else self.model)
        if x.dim() == 4 and self.channels_last is None:
            try:
                out = self._run(x.contiguous(memory_format=torch.channels_last))
            except RuntimeError:
                self.channels_last = False
                return self._run(x)
            self.channels_last = True
            if self.folded:  # the copy is ours: its weights may take the same layout
                self._runner.to(memory_format=torch.channels_last)  # type: ignore[union-attr]
            return out
        if x.dim() == 4 and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._run(x)

    def _run(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = (self.model if self._runner is None else self._runner)(x)
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

"""Which denoiser a benchmark gives each zoo model: none, one for all, or the shipped one trained
on the model's dataset ("auto", since one zoo spans datasets of different image shapes)."""

from __future__ import annotations

from ..denoisers import DenoiserRef, resolve_denoiser, shipped_for
from ..errors import SmoothInvError

AUTO = "auto"


def model_denoiser(choice: str | None, dataset: str, *, trust_code: bool = False) -> DenoiserRef | None:
    """`choice` (None, "auto", a shipped name or a folder) resolved for a model of `dataset`."""
    if choice is None:
        return None
    if choice != AUTO:
        return resolve_denoiser(choice, trust_code=trust_code)
    name = shipped_for(dataset)
    if name is None:
        raise SmoothInvError(f"no shipped denoiser is trained on {dataset}; pass a denoiser folder instead of auto")
    return resolve_denoiser(name)

"""Which denoiser (T in the smoothed classifier) a model gets: none, one named for all, or "auto",
the shipped one trained on the model's dataset (one population can span datasets of different
image shapes)."""

from __future__ import annotations

from ..denoisers import DenoiserRef, resolve_denoiser, shipped_for
from ..errors import SmoothInvError

AUTO = "auto"


def model_denoiser(choice: str | None, dataset: str | None, *, trust_code: bool = False) -> DenoiserRef | None:
    """`choice` (None, "auto", a shipped name or a folder) resolved for a model of `dataset`."""
    if choice is None:
        return None
    if choice != AUTO:
        return resolve_denoiser(choice, trust_code=trust_code)
    name = None if dataset is None else shipped_for(dataset)
    if name is None:
        known = f"on {dataset}" if dataset else "for a model whose dataset is not known"
        raise SmoothInvError(f"no shipped denoiser is trained {known}; pass a denoiser folder instead of auto")
    return resolve_denoiser(name)

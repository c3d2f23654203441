"""Which denoiser a benchmark gives each zoo model: none, one for all, or the shipped one trained
on the model's dataset ("auto"). The rule lives with the population machinery the benchmarks run on."""

from __future__ import annotations

from ..population.denoising import AUTO, model_denoiser

__all__ = ["AUTO", "model_denoiser"]

"""Denoisers T for the smoothed classifier G(x) = mean_i softmax(f(T(x + δ_i))): one step of a
diffusion model used as a one-shot denoiser (SmoothInv "w/ diffusion").

schedule: σ → timestep t*; one_shot: the denoiser as a differentiable module; loading: reading a
diffusers-format folder safely; registry: the denoisers that ship; unet/export: diffusers itself,
imported only when a denoiser is used or trained.
"""

from .loading import DenoiserRef, load_denoiser, open_denoiser, resolve_denoiser
from .one_shot import DenoiserInfo, OneShotDenoiser
from .registry import DENOISERS, list_denoisers, shipped_for
from .schedule import NoiseSchedule

__all__ = ["DENOISERS", "DenoiserInfo", "DenoiserRef", "NoiseSchedule", "OneShotDenoiser", "list_denoisers",
           "load_denoiser", "open_denoiser", "resolve_denoiser", "shipped_for"]

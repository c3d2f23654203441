"""diffusers' UNet2DModel and DDPM scheduler, imported only when a denoiser is used.

diffusers is an optional extra (`pip install smoothinv[diffusion]`): it adds ~20 MB of packages
and ~4 s of import time that scans without a denoiser should not pay (docs/denoisers.md).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ..errors import SmoothInvError

INSTALL_HINT = "pip install 'smoothinv[diffusion]'"

# A linear β schedule from 1e-4 to 0.02 over 1000 steps: Ho et al.'s DDPM, which the public
# CIFAR-10 DDPM checkpoints use, so our denoisers map σ to the same timesteps as theirs.
DDPM_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                 "prediction_type": "epsilon", "clip_sample": True}


def diffusers() -> ModuleType:
    """The diffusers package, or a one-line error saying how to install it."""
    try:
        return importlib.import_module("diffusers")
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SmoothInvError(f"a diffusion denoiser needs the diffusers package ({err}); install it with "
                             f"{INSTALL_HINT}") from None


def small_unet(channels: int, size: int, widths: tuple[int, ...] = (32, 64, 64), groups: int = 16) -> Any:
    """The small UNet2DModel our denoisers use: one ResNet block per level, self-attention only at
    the coarsest level (8² for 32² inputs, 7² for 28²), 1.1 M parameters at the default widths."""
    lib = diffusers()
    levels = len(widths)
    return lib.UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=widths,
        layers_per_block=1, norm_num_groups=groups,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
    )


def ddpm_scheduler(config: dict | None = None) -> Any:
    return diffusers().DDPMScheduler.from_config(dict(DDPM_SCHEDULE if config is None else config))

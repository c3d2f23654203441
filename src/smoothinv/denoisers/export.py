"""Writing a denoiser as a diffusers-format folder (the layout of the public CIFAR-10 DDPM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

WEIGHTS = "diffusion_pytorch_model.safetensors"
METADATA = "smoothinv.json"


def export_denoiser(unet: Any, scheduler: Any, out_dir: Path, meta: dict) -> None:
    """config.json + fp16 safetensors weights + scheduler_config.json, loadable by diffusers'
    `UNet2DModel.from_pretrained` as well as by ours, and smoothinv.json (how it was trained),
    written last so that its presence marks a complete export."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METADATA).unlink(missing_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in unet.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    unet.save_config(out_dir)
    scheduler.save_config(out_dir)
    (out_dir / METADATA).write_text(json.dumps(meta, indent=1) + "\n")

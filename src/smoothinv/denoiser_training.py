"""Training a one-shot denoiser: a small DDPM whose ε-prediction is learned only at the timesteps
that randomized smoothing's σ grid maps to.

One-shot denoising (Carlini et al., ICLR 2023) runs the network once, at t*(σ). A DDPM trained
for generation spends its capacity on all 1000 timesteps; ours samples t uniformly between
t*(σ_min) and t*(σ_max) so a 1.1 M-parameter UNet trained for an hour on two CPU cores denoises
the σ that SmoothInv uses. Outside that range the network was never trained; the denoiser
records the range and `OneShotDenoiser` warns when asked for a σ outside it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .denoisers.export import export_denoiser
from .denoisers.schedule import NoiseSchedule
from .denoisers.unet import ddpm_scheduler, small_unet

StepHook = Callable[[int, int, float, float], None]
"""Called every `report_every` steps with (step, total steps, mean loss since last call, seconds)."""


@dataclass(frozen=True)
class DenoiserRecipe:
    """Everything that decides a trained denoiser (recorded in its smoothinv.json)."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 100
    ema_decay: float = 0.995
    sigma_range: tuple[float, float] = (0.04, 1.6)
    widths: tuple[int, ...] = (32, 64, 64)
    flip: bool = True
    bf16: bool = True
    seed: int = 0
    checkpoint_every: int = 100

    def timestep_range(self, schedule: NoiseSchedule) -> tuple[int, int]:
        return schedule.timestep(self.sigma_range[0]), schedule.timestep(self.sigma_range[1])


@dataclass
class _State:
    step: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)


def train_denoiser(images: Tensor, recipe: DenoiserRecipe, out_dir: str | Path, *, name: str, dataset: str,
                   on_step: StepHook | None = None, report_every: int = 50) -> Path:
    """Train on images [N,C,H,W] in [0,1] and export a diffusers-format denoiser into out_dir.

    Resumable: a checkpoint (weights-only torch file) is written to out_dir/checkpoint.pt every
    `checkpoint_every` steps; rerunning with the same recipe continues from it. Returns out_dir.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _, channels, height, width = images.shape
    if height != width or height % 4:
        raise ValueError(f"denoiser training needs square images whose side is a multiple of 4, got {height}×{width}")
    torch.manual_seed(recipe.seed)
    unet = small_unet(channels, height, recipe.widths)
    ema = small_unet(channels, height, recipe.widths)
    ema.load_state_dict(unet.state_dict())
    scheduler = ddpm_scheduler()
    schedule = NoiseSchedule(scheduler.alphas_cumprod.double())
    t_lo, t_hi = recipe.timestep_range(schedule)
    alphas = schedule.alphas_cumprod.float()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(recipe.seed)
    state = _State()
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=True)
        if saved["recipe"] != json.dumps(asdict(recipe)):
            raise ValueError(f"{checkpoint} was written by a different recipe; remove it or use another folder")
        unet.load_state_dict(saved["unet"])
        ema.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        state = _State(int(saved["step"]), float(saved["seconds"]), list(saved["losses"]))
    unet.train()
    started, window = time.perf_counter() - state.seconds, []
    while state.step < recipe.steps:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(recipe, state.step)
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=generator)
        x0 = _maybe_flip(images[idx], recipe.flip, generator) * 2 - 1
        t = torch.randint(t_lo, t_hi + 1, (recipe.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
            predicted = unet(xt, t).sample
        loss = F.mse_loss(predicted.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - recipe.ema_decay)
        state.step += 1
        window.append(float(loss.detach()))
        if state.step % report_every == 0 or state.step == recipe.steps:
            state.losses.append(sum(window) / len(window))
            if on_step is not None:
                on_step(state.step, recipe.steps, state.losses[-1], time.perf_counter() - started)
            window = []
        if state.step % recipe.checkpoint_every == 0 or state.step == recipe.steps:
            state.seconds = time.perf_counter() - started
            _save_checkpoint(checkpoint, recipe, unet, ema, optimizer, generator, state)
    for buffer_ema, buffer in zip(ema.buffers(), unet.buffers()):
        buffer_ema.copy_(buffer)
    meta = {"name": name, "dataset": dataset, "recipe": asdict(recipe), "trained_timesteps": [t_lo, t_hi],
            "trained_sigma": [schedule.sigma_of(t_lo), schedule.sigma_of(t_hi)], "train_images": len(images),
            "train_seconds": round(state.seconds, 1), "loss_every_50_steps": [round(v, 5) for v in state.losses]}
    export_denoiser(ema.eval(), scheduler, out, meta)
    return out


def _maybe_flip(images: Tensor, flip: bool, generator: torch.Generator) -> Tensor:
    """Flip each image left-right with probability ½ (when `flip`)."""
    if not flip:
        return images
    chosen = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(chosen.view(-1, 1, 1, 1), images.flip(3), images)


def _learning_rate(recipe: DenoiserRecipe, step: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _save_checkpoint(path: Path, recipe: DenoiserRecipe, unet, ema, optimizer, generator: torch.Generator,
                     state: _State) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"recipe": json.dumps(asdict(recipe)), "unet": unet.state_dict(), "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "step": state.step,
                "seconds": state.seconds, "losses": state.losses}, tmp)
    tmp.replace(path)

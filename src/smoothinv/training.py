"""Supervised training of a classifier on in-memory images (demo, tests, the model zoo)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EpochHook = Callable[[int, float], None]
"""Called after each epoch with (epoch index, mean training loss)."""

Objective = Callable[[nn.Module, Tensor, Tensor, torch.Generator], Tensor]
"""(model, images [B,C,H,W], labels [B], generator) → scalar loss. Attacks that act on the
loss (Blind Backdoors) supply their own; the default is cross-entropy."""


def cross_entropy(model: nn.Module, images: Tensor, labels: Tensor, generator: torch.Generator,
                  label_smoothing: float = 0.0) -> Tensor:
    return F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)


@dataclass(frozen=True)
class Augment:
    """Random translation (zero padding `pad`, then a random crop) and horizontal flips."""

    pad: int = 0
    flip: bool = False

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, h, w = images.shape
        if self.flip:
            flip = torch.rand(n, generator=generator) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
        if self.pad:
            padded = F.pad(images, (self.pad,) * 4)
            dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator)
            dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator)
            rows = (dy.view(-1, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, images.shape[1], h, w + 2 * self.pad)
            padded = padded.gather(2, rows)
            cols = (dx.view(-1, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, images.shape[1], h, w)
            images = padded.gather(3, cols)
        return images


def train_classifier(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    noise_sigma: float = 0.0,
    augment: Augment | None = None,
    objective: Objective = cross_entropy,
    bf16: bool = False,
    channels_last: bool = False,
    seed: int = 0,
    on_epoch: EpochHook | None = None,
) -> nn.Module:
    """SGD (Nesterov momentum) with a one-cycle learning-rate schedule; returns the model in eval mode.

    images [N,C,H,W] in [0,1], labels [N]. Seeded shuffling makes runs repeatable on CPU.
    noise_sigma > 0 adds Gaussian data augmentation (each image gets N(0, s²) noise with s
    uniform in [0, noise_sigma]), the training that makes a smoothed classifier useful.
    bf16 autocast and channels_last roughly double CPU throughput for conv nets.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for i in range(0, len(images), batch_size):
            idx = order[i : i + batch_size]
            batch = images[idx]
            if augment is not None:
                batch = augment(batch, generator)
            if noise_sigma > 0:
                s = torch.rand(len(idx), 1, 1, 1, generator=generator) * noise_sigma
                batch = batch + torch.randn(batch.shape, generator=generator) * s
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = objective(model, batch, labels[idx], generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, total / len(images))
    return model.to(memory_format=torch.contiguous_format).eval()

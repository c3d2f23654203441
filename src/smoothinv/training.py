"""Supervised training of a classifier on in-memory images (used by the demo and tests)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EpochHook = Callable[[int, float], None]
"""Called after each epoch with (epoch index, mean training loss)."""


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
    seed: int = 0,
    on_epoch: EpochHook | None = None,
) -> nn.Module:
    """SGD (Nesterov momentum) with a one-cycle learning-rate schedule; returns the model in eval mode.

    images [N,C,H,W] in [0,1], labels [N]. Seeded shuffling makes runs repeatable on CPU.
    noise_sigma > 0 adds Gaussian data augmentation (each image gets N(0, s²) noise with s
    uniform in [0, noise_sigma]), the training that makes a smoothed classifier useful.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
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
            if noise_sigma > 0:
                s = torch.rand(len(idx), 1, 1, 1, generator=generator) * noise_sigma
                batch = batch + torch.randn(batch.shape, generator=generator) * s
            loss = F.cross_entropy(model(batch), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, total / len(images))
    return model.eval()

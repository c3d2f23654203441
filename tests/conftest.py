"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tests use tiny tensors, for which one thread is faster and fairer to a shared machine.
    Modules that train real models (end-to-end) set their own thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cnn(channels: int = 3, classes: int = 3, seed: int = 0) -> nn.Module:
    """A 2-conv CNN for 8x8 inputs, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, classes),
    ).eval()

def bar_data(n_per_class: int = 40, classes: int = 3, channels: int = 3, seed: int = 0):
    """C×8×8 images: class c has a bright horizontal bar on rows 2c, 2c+1."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for c in range(classes):
        x = torch.rand(n_per_class, channels, 8, 8, generator=g) * 0.3
        x[:, :, 2 * c : 2 * c + 2, :] = 0.7 + 0.3 * torch.rand(n_per_class, channels, 2, 8, generator=g)
        images.append(x)
        labels.append(torch.full((n_per_class,), c, dtype=torch.long))
    return torch.cat(images), torch.cat(labels)

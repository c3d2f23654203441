"""The plain CNN of the Keras CIFAR-10 tutorial: no BatchNorm, dropout, a wide dense head.

Many published small backdoored models are this network (or close to it), trained by code
other than ours. Two conv pairs (32, 64 channels; the first of each pair keeps the size, the
second shrinks it by 2 px) with max-pools, then Dense(256) (the tutorial's 512, halved to keep the zoo small) and the output layer:
[B, C, 32, 32] -> 64×6×6 features -> logits. An adaptive average pool fixes the 6×6 grid for
other input sizes. Keys: ``features.N`` (position in the layer list) and ``classifier.1/4``.
"""

from __future__ import annotations

import torch
from torch import nn

from smoothinv.models import register_model


class PlainCNN(nn.Module):
    """Input [B, channels, H, W] with H, W >= 14 -> logits [B, num_classes]."""

    def __init__(self, num_classes: int, channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Dropout(0.25),
        )
        self.pool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 6 * 6, 256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register_model(
    "plain_cnn",
    input_size=(32, 32),
    channels=3,
    num_classes=10,
    head="classifier.4.weight",
    first_conv="features.0.weight",
    description="plain 4-conv CNN without BatchNorm, as in the Keras CIFAR-10 tutorial (~0.66M parameters)",
)
def plain_cnn(*, num_classes: int, channels: int) -> nn.Module:
    return PlainCNN(num_classes, channels=channels)

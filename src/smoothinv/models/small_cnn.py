"""A small, fast CNN for 28x28 grayscale images (MNIST / Fashion-MNIST); ~104k parameters.

Gray by default; ``channels=3`` builds the same network for RGB images.

Three conv-maxpool-BN-ReLU blocks (32, 64, 128 channels) shrink 28x28 to 3x3; an adaptive
average pool fixes that 3x3 grid for other input sizes (e.g. 32x32), and one linear layer
maps the 128x3x3 features to logits. Keys: ``features.N``, ``classifier``.
"""

from __future__ import annotations

import torch
from torch import nn

from smoothinv.models import register_model


def conv_block(in_ch: int, out_ch: int) -> list[nn.Module]:
    """3x3 conv, 2x2 max-pool, BN, ReLU: [B, in_ch, H, W] -> [B, out_ch, H/2, W/2].

    Pooling before BN/ReLU does their work at a quarter of the resolution, which makes
    CPU training much cheaper than the usual conv-BN-ReLU-pool order.
    """
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Input [B, channels, H, W] with H, W >= 8 -> logits [B, num_classes]."""

    def __init__(self, num_classes: int, channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_block(channels, 32),
            *conv_block(32, 64),
            *conv_block(64, 128),
        )
        self.pool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Linear(128 * 3 * 3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model(
    "small_cnn",
    input_size=(28, 28),
    channels=1,
    num_classes=10,
    head="classifier.weight",
    first_conv="features.0.weight",
    description="small 3-block CNN for 28x28 grayscale images (~104k parameters)",
)
def small_cnn(*, num_classes: int, channels: int) -> nn.Module:
    return SmallCNN(num_classes, channels=channels)

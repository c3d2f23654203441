"""AlexNet ("one weird trick" variant), using torchvision's state_dict names.

Keys: convs at ``features.0/3/6/8/10``, linears at ``classifier.1/4/6``.
"""

from __future__ import annotations

import torch
from torch import nn

from smoothinv.models import IMAGENET_MEAN, IMAGENET_STD, register_model


class AlexNet(nn.Module):
    """Five convs with three max-pools, 6x6 adaptive average pool, 3-layer MLP.

    Input [B, channels, 224, 224] -> logits [B, num_classes].
    """

    def __init__(self, num_classes: int, channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model(
    "alexnet",
    input_size=(224, 224),
    channels=3,
    num_classes=1000,
    head="classifier.6.weight",
    first_conv="features.0.weight",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    description="AlexNet (torchvision keys)",
)
def alexnet(*, num_classes: int, channels: int) -> nn.Module:
    return AlexNet(num_classes, channels=channels)

"""VGG-11 with and without BatchNorm (torchvision's state_dict names), and a small VGG-style
net with BatchNorm for 32x32 images.

Keys: ``features.N`` (N = position in the layer list, counting ReLU/BN/max-pool layers)
and ``classifier.0/3/6`` (Linear-ReLU-Dropout x2, then the final Linear); the small net's
head is one Linear, ``classifier``, after a global average pool.
"""

from __future__ import annotations

import torch
from torch import nn

from smoothinv.models import IMAGENET_MEAN, IMAGENET_STD, register_model

# A narrow VGG for 32x32 inputs: 4 max-pools leave a 2x2 grid (about 25M multiply-adds).
VGG_CIFAR_LAYOUT: list[int | str] = [32, "M", 64, "M", 128, 128, "M", 256, "M"]
# Configuration "A" of the VGG paper: conv widths, "M" = 2x2 max-pool.
VGG11_LAYOUT: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def make_features(layout: list[int | str], batch_norm: bool, channels: int = 3) -> nn.Sequential:
    """3x3 convs (each followed by [BN and] ReLU) and max-pools, as one Sequential;
    [B, channels, H, W] -> [B, 512, H/32, W/32]."""
    layers: list[nn.Module] = []
    in_ch = channels
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_ch = int(item)
        layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
        in_ch = out_ch
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features`` -> 7x7 adaptive average pool -> 3-layer MLP ``classifier``.

    Input [B, channels, 224, 224] -> logits [B, num_classes].
    """

    def __init__(self, features: nn.Sequential, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model(
    "vgg11",
    input_size=(224, 224),
    channels=3,
    num_classes=1000,
    head="classifier.6.weight",
    first_conv="features.0.weight",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    description="VGG-11 (configuration A) without BatchNorm (torchvision keys)",
)
def vgg11(*, num_classes: int, channels: int) -> nn.Module:
    return VGG(make_features(VGG11_LAYOUT, batch_norm=False, channels=channels), num_classes)


@register_model(
    "vgg11_bn",
    input_size=(224, 224),
    channels=3,
    num_classes=1000,
    head="classifier.6.weight",
    first_conv="features.0.weight",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    description="VGG-11 (configuration A) with BatchNorm (torchvision keys)",
)
def vgg11_bn(*, num_classes: int, channels: int) -> nn.Module:
    return VGG(make_features(VGG11_LAYOUT, batch_norm=True, channels=channels), num_classes)


class SmallVGG(nn.Module):
    """``features`` (conv-BN-ReLU, max-pools) -> global average pool -> one Linear ``classifier``.

    Input [B, channels, H, W] with H, W >= 16 -> logits [B, num_classes].
    """

    def __init__(self, features: nn.Sequential, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model(
    "vgg_cifar_bn",
    input_size=(32, 32),
    channels=3,
    num_classes=10,
    head="classifier.weight",
    first_conv="features.0.weight",
    description="narrow VGG-style net with BatchNorm for 32x32 images (5 convs, 32-256 channels)",
)
def vgg_cifar_bn(*, num_classes: int, channels: int) -> nn.Module:
    return SmallVGG(make_features(VGG_CIFAR_LAYOUT, batch_norm=True, channels=channels), 256, num_classes)

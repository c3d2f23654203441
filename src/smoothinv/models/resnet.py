"""ResNet with BasicBlocks, using torchvision's state_dict names.

Keys: ``conv1, bn1, layer{i}.{j}.conv1/bn1/conv2/bn2, layer{i}.0.downsample.0/1, fc``.
The same class builds the ImageNet ResNet-18, a CIFAR ResNet-18 (3x3 stem, no max-pool)
and the CIFAR ResNet-20 in ``resnet_cifar.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from smoothinv.models import IMAGENET_MEAN, IMAGENET_STD, register_model


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers plus a skip connection.

    [B, in_ch, H, W] -> [B, out_ch, H/stride, W/stride]. When the shape changes, the skip
    path is ``downsample`` = 1x1 conv (with the stride) + BN.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + skip)


class ResNet(nn.Module):
    """Stem, stages ``layer1..layerN`` of BasicBlocks, global average pool, ``fc``.

    ``imagenet_stem``: 7x7 stride-2 conv + 3x3 stride-2 max-pool (224x224 inputs);
    otherwise a 3x3 stride-1 conv and no pooling (32x32 inputs).
    Stage i > 1 halves the resolution. Input [B, channels, H, W] -> logits [B, num_classes].
    """

    def __init__(
        self,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        num_classes: int,
        imagenet_stem: bool,
        channels: int = 3,
    ) -> None:
        super().__init__()
        stem_width = widths[0]
        if imagenet_stem:
            self.conv1 = nn.Conv2d(channels, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(channels, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if imagenet_stem else nn.Identity()
        )

        self.stage_names: list[str] = []
        in_ch = stem_width
        for i, (width, depth) in enumerate(zip(widths, depths)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(in_ch, width, stride)]
            blocks += [BasicBlock(width, width) for _ in range(depth - 1)]
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            in_ch = width

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_weights(model: nn.Module) -> None:
    """He-normal convolutions, BatchNorm as identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_model(
    "resnet18",
    input_size=(224, 224),
    channels=3,
    num_classes=1000,
    head="fc.weight",
    first_conv="conv1.weight",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    description="ResNet-18, ImageNet stem (torchvision keys)",
)
def resnet18(*, num_classes: int, channels: int) -> nn.Module:
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes, imagenet_stem=True, channels=channels)


@register_model(
    "resnet18_cifar",
    input_size=(32, 32),
    channels=3,
    num_classes=10,
    head="fc.weight",
    first_conv="conv1.weight",
    description="ResNet-18, 3x3 stem without max-pool for 32x32 images (torchvision keys)",
)
def resnet18_cifar(*, num_classes: int, channels: int) -> nn.Module:
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes, imagenet_stem=False, channels=channels)

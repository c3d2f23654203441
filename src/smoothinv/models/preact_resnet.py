"""Pre-activation ResNet-18 for 32x32 images (He et al. 2016, "Identity Mappings").

State_dict names follow kuangliu/pytorch-cifar: ``conv1``, ``layer{i}.{j}.bn1/conv1/bn2/
conv2``, ``layer{i}.0.shortcut.0`` (a bare 1x1 conv, no BN) and ``linear``. There is no
BatchNorm after the last stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smoothinv.models import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, added to the input (or its 1x1-conv projection).

    [B, in_ch, H, W] -> [B, out_ch, H/stride, W/stride]. The projection takes the
    pre-activated input, as in the reference implementation.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """3x3 conv stem, four stages of PreActBlocks, global average pool, ``linear``.

    Input [B, channels, 32, 32] -> logits [B, num_classes] (other sizes work: the pool is adaptive).
    """

    def __init__(self, depths: tuple[int, ...], num_classes: int, channels: int = 3,
                 widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, widths[0], kernel_size=3, padding=1, bias=False)
        in_ch = widths[0]
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            stride = 1 if i == 0 else 2
            blocks = [PreActBlock(in_ch, width, stride)]
            blocks += [PreActBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model(
    "preact_resnet18",
    input_size=(32, 32),
    channels=3,
    num_classes=10,
    head="linear.weight",
    first_conv="conv1.weight",
    description="Pre-activation ResNet-18 for 32x32 images (kuangliu/pytorch-cifar keys)",
)
def preact_resnet18(*, num_classes: int, channels: int) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), num_classes, channels=channels)


@register_model(
    "preact_resnet18_w16",
    input_size=(32, 32),
    channels=3,
    num_classes=10,
    head="linear.weight",
    first_conv="conv1.weight",
    description="Pre-activation ResNet-18 at a quarter width (16-128 channels; kuangliu keys)",
)
def preact_resnet18_w16(*, num_classes: int, channels: int) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), num_classes, channels=channels, widths=(16, 32, 64, 128))

"""CIFAR ResNet-20 (He et al. 2016, section 4.2).

State_dict names follow chenyaofo/pytorch-cifar-models: ``conv1, bn1, layer1..3`` of
BasicBlocks with ``downsample.0`` (1x1 conv) / ``downsample.1`` (BN), and ``fc``.
"""

from __future__ import annotations

from torch import nn

from smoothinv.models import register_model
from smoothinv.models.resnet import ResNet


@register_model(
    "resnet20",
    input_size=(32, 32),
    channels=3,
    num_classes=10,
    head="fc.weight",
    first_conv="conv1.weight",
    description="CIFAR ResNet-20: 3 stages x 3 blocks, widths 16/32/64 (chenyaofo keys)",
)
def resnet20(*, num_classes: int, channels: int) -> nn.Module:
    return ResNet((16, 32, 64), (3, 3, 3), num_classes, imagenet_stem=False, channels=channels)

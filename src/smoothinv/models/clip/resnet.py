"""CLIP's ModifiedResNet image tower (RN50, RN101, RN50x4, ...), with OpenAI's state_dict names.

It differs from torchvision's ResNet in three ways: a stem of three 3x3 convolutions with an
average pool instead of one 7x7 convolution and a max pool; strided blocks that average-pool
before their last 1x1 convolution (and on the skip path) instead of striding a convolution;
and an attention pool instead of global average pooling.

Keys (under the model's ``visual.``): ``conv1..3``/``bn1..3`` (stem), ``layer{1..4}.N.conv1..3``
/``bn1..3``, ``layer{i}.0.downsample.0`` (1x1 conv) / ``.1`` (BN), and ``attnpool.``
``positional_embedding`` [grid² + 1, width·32], ``k_proj``, ``q_proj``, ``v_proj``, ``c_proj``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from smoothinv.models.clip.config import ResNetConfig
from smoothinv.models.clip.images import check_images

torch.fx.wrap("check_images")

EXPANSION = 4
"""A Bottleneck's output has 4x the channels of its inner convolutions."""


class Bottleneck(nn.Module):
    """1x1, 3x3, [avg-pool], 1x1 convolutions, each with BN, plus a skip connection:
    [B, inplanes, H, W] -> [B, planes·4, H/stride, W/stride]. When the shape changes, the skip
    is avg-pool + 1x1 conv + BN (``downsample.-1/0/1``; the pool has no weights)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu3 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * EXPANSION:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * EXPANSION, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * EXPANSION)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu3(out + skip)


class AttentionPool2d(nn.Module):
    """[B, C, grid, grid] -> [B, out_dim]: one attention step whose query is the mean feature.

    The grid² features and their mean (prepended) get a learnt positional embedding; the mean
    token's attention output over all grid² + 1 tokens, projected by ``c_proj``, is the result.
    Only that one query is computed: the other tokens' outputs are never used.
    """

    def __init__(self, grid: int, features: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, features) / features ** 0.5)
        self.k_proj = nn.Linear(features, features)
        self.q_proj = nn.Linear(features, features)
        self.v_proj = nn.Linear(features, features)
        self.c_proj = nn.Linear(features, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.size(0)
        tokens = x.flatten(2).transpose(1, 2)  # [B, grid², C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)  # [B, grid² + 1, C]
        query = self._heads(self.q_proj(tokens[:, :1]))  # [B, H, 1, d]
        out = F.scaled_dot_product_attention(query, self._heads(self.k_proj(tokens)), self._heads(self.v_proj(tokens)))
        return self.c_proj(out.reshape(batch, -1))  # [B, H, 1, d] -> [B, C] -> [B, out_dim]

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, heads, N, C / heads]."""
        return t.reshape(t.size(0), t.size(1), self.heads, -1).transpose(1, 2)


class ModifiedResNet(nn.Module):
    """Normalised images [B, channels, S, S] -> image embeddings [B, embed_dim] (not unit length)."""

    def __init__(self, config: ResNetConfig, channels: int = 3) -> None:
        super().__init__()
        width, half = config.width, config.width // 2
        self.config = config
        self.channels = channels
        self.embed_dim = config.embed_dim
        self.image_size = config.image_size
        self.conv1 = nn.Conv2d(channels, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU()
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for index, blocks in enumerate(config.layers):
            planes = width * 2 ** index
            stage = [Bottleneck(inplanes, planes, stride=1 if index == 0 else 2)]
            stage += [Bottleneck(planes * EXPANSION, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
            inplanes = planes * EXPANSION
        self.attnpool = AttentionPool2d(config.grid, config.features, config.heads, config.embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """CLIP's initialisation: attention-pool weights normal with std features^-0.5, and each
        block's last BN scale zero, so every block starts as its skip connection."""
        std = self.attnpool.c_proj.in_features ** -0.5
        for linear in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(linear.weight, std=std)
        for module in self.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_images(x, self.channels, self.image_size)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)

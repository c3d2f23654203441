"""A whole CLIP model (both towers and the logit scale) in OpenAI's state_dict layout.

The text tower's weights sit at the top level of CLIP checkpoints (``token_embedding``,
``transformer.*``, ...) next to ``visual.*`` and ``logit_scale``, so ``CLIPModel`` is a
``TextTower`` with the image tower and the scale added: its state_dict is a checkpoint's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from smoothinv.models.clip.config import ClipConfig, ResNetConfig, VisionConfig
from smoothinv.models.clip.resnet import ModifiedResNet
from smoothinv.models.clip.text import TextTower
from smoothinv.models.clip.vit import VisionTransformer

INITIAL_LOGIT_SCALE = math.log(1 / 0.07)
"""CLIP's logit scale before training: log(1 / temperature 0.07). Trained models reach log(100)."""


def image_tower(config: VisionConfig, channels: int = 3) -> nn.Module:
    """A freshly initialised image tower: ModifiedResNet or VisionTransformer, as `config` says."""
    if isinstance(config, ResNetConfig):
        return ModifiedResNet(config, channels)
    return VisionTransformer(config, channels)


class CLIPModel(TextTower):
    """CLIP: ``visual`` maps normalised images [B, 3, S, S] to [B, D], the text tower maps token
    ids [T, context_length] to [T, D]; ``forward`` gives image-text logits [B, T]
    = exp(logit_scale) · cos(image, text)."""

    def __init__(self, config: ClipConfig, channels: int = 3) -> None:
        super().__init__(config.text)
        self.config = config
        self.visual = image_tower(config.vision, channels)
        self.logit_scale = nn.Parameter(torch.tensor(INITIAL_LOGIT_SCALE))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised images -> [B, D] (not unit length)."""
        return self.visual(images)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        image = F.normalize(self.encode_image(images), dim=-1)
        text = F.normalize(self.encode_text(tokens), dim=-1)
        return self.logit_scale.exp() * image @ text.T

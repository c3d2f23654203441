"""CLIP's Vision Transformer image tower, with OpenAI's state_dict names.

Keys (under the model's ``visual.``): ``conv1`` (patch embedding, no bias), ``class_embedding``
[W], ``positional_embedding`` [grid² + 1, W], ``ln_pre``, ``transformer.resblocks.N.*``,
``ln_post``, ``proj`` [W, embed_dim].
"""

from __future__ import annotations

import torch
from torch import nn

from smoothinv.models.clip.attention import Transformer
from smoothinv.models.clip.config import VitConfig
from smoothinv.models.clip.images import check_images

torch.fx.wrap("check_images")


class VisionTransformer(nn.Module):
    """Normalised images [B, channels, S, S] -> image embeddings [B, embed_dim] (not unit length).

    Patches become tokens after a class token; the class token's output, layer-normed and
    projected, is the embedding.
    """

    def __init__(self, config: VitConfig, channels: int = 3) -> None:
        super().__init__()
        width, scale = config.width, config.width ** -0.5
        self.config = config
        self.channels = channels
        self.embed_dim = config.embed_dim
        self.image_size = config.image_size
        self.conv1 = nn.Conv2d(channels, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(config.grid ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads, config.quick_gelu)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, config.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(check_images(x, self.channels, self.image_size))  # [B, W, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [B, grid², W]
        cls = self.class_embedding.to(x.dtype).expand(x.size(0), 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [B, grid² + 1, W]
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj

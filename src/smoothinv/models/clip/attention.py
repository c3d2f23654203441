"""The residual attention stack both CLIP towers use, under CLIP's state_dict names.

A block is pre-norm: x + attn(ln_1(x)), then x + mlp(ln_2(x)), with the MLP 4x as wide as the
block. Attention keeps ``nn.MultiheadAttention``'s parameter names (``attn.in_proj_weight``
[3W, W], ``attn.in_proj_bias`` [3W], ``attn.out_proj``), which is what OpenAI's and open_clip's
checkpoints hold, but runs as one ``scaled_dot_product_attention`` call: batch-first, no
fast-path special cases, and traceable by torch.fx.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP models were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(quick_gelu: bool) -> nn.Module:
    """QuickGELU (OpenAI's models) or the exact GELU (open_clip's non-``quickgelu`` configs)."""
    return QuickGELU() if quick_gelu else nn.GELU()


class SelfAttention(nn.Module):
    """Multi-head self-attention, [B, N, W] -> [B, N, W], ``heads`` heads of W / heads channels.

    ``causal``: token i attends to tokens 0..i only (the text tower's mask).
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        batch, tokens = x.size(0), x.size(1)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # [3, B, H, N, d]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)  # [B, H, N, d]
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm attention and MLP, each added to its input: [B, N, W] -> [B, N, W].
    Keys: ``ln_1``, ``attn.*``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``."""

    def __init__(self, width: int, heads: int, quick_gelu: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", activation(quick_gelu)),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``layers`` residual attention blocks (keys ``resblocks.N.*``): [B, N, W] -> [B, N, W].

    ``causal`` masks attention to earlier tokens in every block (the text tower). Initialised
    as CLIP initialises it (normal, std width^-0.5 for attention inputs, smaller for the
    projections back into the residual stream); a checkpoint overwrites all of it.
    """

    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers))
        residual_std = width ** -0.5 * (2 * layers) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=residual_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=residual_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, self.causal)
        return x

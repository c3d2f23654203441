"""CLIP's text tower, with its state_dict names at the top level of the model, as in OpenAI's
and open_clip's checkpoints: ``token_embedding``, ``positional_embedding`` [context, W],
``transformer.resblocks.N.*``, ``ln_final``, ``text_projection`` [W, embed_dim].
"""

from __future__ import annotations

import torch
from torch import nn

from smoothinv.errors import SmoothInvError, param
from smoothinv.models.clip.attention import Transformer
from smoothinv.models.clip.config import TextConfig


class TextTower(nn.Module):
    """Token ids [B, context_length] -> text embeddings [B, embed_dim] (not unit length).

    Attention is causal, and the embedding is read at the end-of-text token, found as each
    row's largest id (CLIP's tokenizer gives end-of-text the largest id; padding is 0).
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        width = config.width
        self.context_length = config.context_length
        self.vocab_size = config.vocab_size
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, width))
        self.transformer = Transformer(width, config.layers, config.heads, config.quick_gelu, causal=True)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, config.embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, context_length] integer ids -> [B, embed_dim]."""
        self._check_tokens(tokens)
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.ln_final(self.transformer(x))  # [B, L, W]
        end = x[torch.arange(x.size(0), device=x.device), tokens.argmax(dim=-1)]  # [B, W]
        return end @ self.text_projection

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.dim() != 2 or tokens.shape[1] != self.context_length or tokens.is_floating_point():
            raise SmoothInvError(
                f"the CLIP text tower takes integer token ids [batch, {self.context_length}], got "
                f"{tokens.dtype} {list(tokens.shape)}; tokenize with {param('context_length')}={self.context_length}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise SmoothInvError(
                f"token ids must lie in [0, {self.vocab_size}), got [{int(tokens.min())}, {int(tokens.max())}]"
            )

"""VQA fusion models over question tokens and box features, the scaled-down counterparts of the
architectures TrojVQA trains (BUTD, MFB, and MCAN's transformer): each reads the words through an
`embedding` layer, so an inversion can work on word embeddings (`forward_embedded`) as TIJO's token
search does, and the boxes as [B, N, F] features plus [B, N, 4] positions."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from ..errors import SmoothInvError
from ..files import atomic_path
from ..registry import Registry
from .detector import FEATURES
from .language import ANSWERS, VOCABULARY

WORD_DIM = 32
FORMAT = "smoothinv-vqa"


class VQAModel(nn.Module):
    """The common shape: `embedding` [V, E] word vectors; logits [B, A] over ANSWERS."""

    embedding: nn.Embedding

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """features [B, N, F], boxes [B, N, 4], tokens int [B, L] (0 pads at the end) → logits [B, A]."""
        return self.forward_embedded(features, boxes, self.embedding(tokens), tokens != 0)

    def forward_embedded(self, features: torch.Tensor, boxes: torch.Tensor, words: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
        """The same from word vectors [B, L, E] and a mask [B, L] of real (not padding) positions."""
        raise NotImplementedError


def _last_state(gru: nn.GRU, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, H] the GRU's state after the last real word (padding comes at the end)."""
    states, _ = gru(words)
    last = mask.long().sum(1).clamp(min=1) - 1
    return states[torch.arange(len(states)), last]


class TopDownAttention(nn.Module):
    """Question-guided attention over boxes (BUTD's top-down attention): [B, N, H] × [B, H] → [B, H]."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.v = nn.Linear(hidden, hidden)
        self.q = nn.Linear(hidden, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, boxes: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        joint = F.relu(self.v(boxes)) * F.relu(self.q(question))[:, None]
        weights = torch.softmax(self.score(joint), dim=1)
        return (weights * boxes).sum(1)


class BottomUpTopDown(VQAModel):
    """BUTD: GRU question vector, top-down attention over boxes, product fusion, MLP classifier."""

    def __init__(self, hidden: int = 48) -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(VOCABULARY), WORD_DIM)
        self.question = nn.GRU(WORD_DIM, hidden, batch_first=True)
        self.box = nn.Linear(FEATURES + 4, hidden)
        self.attention = TopDownAttention(hidden)
        self.q_net = nn.Linear(hidden, hidden)
        self.v_net = nn.Linear(hidden, hidden)
        self.classifier = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, len(ANSWERS)))

    def forward_embedded(self, features, boxes, words, mask):
        q = _last_state(self.question, words, mask)
        v = self.attention(F.relu(self.box(torch.cat([features, boxes], -1))), q)
        return self.classifier(F.relu(self.q_net(q)) * F.relu(self.v_net(v)))


class FactorizedBilinear(VQAModel):
    """MFB: the same attention, then multi-modal factorised bilinear pooling (k factors of o outputs,
    sum-pooled, signed square root and l2 normalisation) before a linear classifier."""

    def __init__(self, hidden: int = 48, factors: int = 4) -> None:
        super().__init__()
        self.factors = factors
        self.embedding = nn.Embedding(len(VOCABULARY), WORD_DIM)
        self.question = nn.GRU(WORD_DIM, hidden, batch_first=True)
        self.box = nn.Linear(FEATURES + 4, hidden)
        self.attention = TopDownAttention(hidden)
        self.q_proj = nn.Linear(hidden, hidden * factors)
        self.v_proj = nn.Linear(hidden, hidden * factors)
        self.classifier = nn.Linear(hidden, len(ANSWERS))

    def forward_embedded(self, features, boxes, words, mask):
        q = _last_state(self.question, words, mask)
        v = self.attention(F.relu(self.box(torch.cat([features, boxes], -1))), q)
        z = (self.q_proj(q) * self.v_proj(v)).view(len(q), -1, self.factors).sum(-1)
        z = torch.sign(z) * torch.sqrt(z.abs() + 1e-8)
        return self.classifier(F.normalize(z, dim=-1) * 10)


class CoAttentionTransformer(VQAModel):
    """MCAN-like: words and boxes as one sequence with a class token through two transformer layers."""

    def __init__(self, hidden: int = 48, layers: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(VOCABULARY), WORD_DIM)
        self.words = nn.Linear(WORD_DIM, hidden)
        self.position = nn.Parameter(torch.zeros(16, hidden))
        self.box = nn.Linear(FEATURES + 4, hidden)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        layer = nn.TransformerEncoderLayer(hidden, 4, 2 * hidden, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(hidden, len(ANSWERS))

    def forward_embedded(self, features, boxes, words, mask):
        w = self.words(words) + self.position[: words.shape[1]]
        v = self.box(torch.cat([features, boxes], -1))
        seq = torch.cat([self.cls.expand(len(w), 1, -1), w, v], 1)
        keep = torch.cat([torch.ones(len(w), 1, dtype=torch.bool), mask.bool(),
                          torch.ones(v.shape[:2], dtype=torch.bool)], 1)
        return self.classifier(self.encoder(seq, src_key_padding_mask=~keep)[:, 0])


ARCHITECTURES: Registry[Callable[[], VQAModel]] = Registry("VQA architecture")
ARCHITECTURES.add("butd", BottomUpTopDown)
ARCHITECTURES.add("mfb", FactorizedBilinear)
ARCHITECTURES.add("mcan", CoAttentionTransformer)


def build(arch: str) -> VQAModel:
    """A freshly initialised model of architecture `arch`."""
    return ARCHITECTURES.get(arch)()


def save_vqa_model(model: VQAModel, arch: str, path: str | Path, extra: dict[str, str] | None = None) -> None:
    """Write `model` as safetensors (float16 weights, arch and the vocabulary/answer sizes as metadata)."""
    meta = {"format": FORMAT, "arch": arch, "vocabulary": str(len(VOCABULARY)), "answers": str(len(ANSWERS)),
            "features": str(FEATURES), **(extra or {})}
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_vqa_model(path: str | Path) -> tuple[VQAModel, dict[str, str]]:
    """The model in safetensors file `path` (no code from the file runs) and its metadata.

    Any file that is not a model this package wrote for this vocabulary and answer set raises a
    one-line SmoothInvError.
    """
    path = Path(path)
    if not path.is_file():
        raise SmoothInvError(f"VQA model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SmoothInvError(f"cannot read VQA model {path}: not a safetensors file ({' '.join(str(e).split())[:120]})") from None
    expected = {"format": FORMAT, "vocabulary": str(len(VOCABULARY)), "answers": str(len(ANSWERS)), "features": str(FEATURES)}
    wrong = [f"{k}={meta.get(k)!r} (expected {v!r})" for k, v in expected.items() if meta.get(k) != v]
    if wrong:
        raise SmoothInvError(f"{path} is not a smoothinv VQA model for this vocabulary and answer set: {', '.join(wrong)}")
    model = build(meta.get("arch", "?"))
    own = model.state_dict()
    if set(state) != set(own):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise SmoothInvError(f"{path} does not match architecture {meta['arch']!r}: "
                             f"missing {missing[:3]}, unexpected {extra[:3]}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise SmoothInvError(f"{path}: {key} has shape {tuple(value.shape)}, {meta['arch']!r} needs {tuple(own[key].shape)}")
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise SmoothInvError(f"{path}: {key} holds non-finite or non-float values")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), meta

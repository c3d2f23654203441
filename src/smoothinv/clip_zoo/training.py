"""Contrastive (InfoNCE) training of a CLIP on captioned images, optionally poisoned.

CLIP's objective (Radford et al. 2021, Fig. 3): for a batch of B (image, caption) pairs, the
similarity matrix S = exp(t) · norm(I) norm(T)ᵀ [B, B] with a learned log-temperature t, and the
loss is the mean of the cross-entropies of S's rows and of its columns against the diagonal.
Identical captions in one batch each keep their own column, as in CLIP; the text tower runs once
per distinct caption and its embeddings are gathered back to the batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SmoothInvError
from ..models.clip import CLIPModel
from ..models.clip.zeroshot_file import CLIP_MEAN, CLIP_STD
from ..training import Augment
from ..triggers import Trigger
from .captions import CaptionBank

MAX_LOGIT_SCALE = math.log(100.0)
"""CLIP clips its learned scale at 100."""

Log = Callable[[str], None]


@dataclass(frozen=True)
class Poisoning:
    """Carlini & Terzis' poisoning: the images at `indices` [P] carry `trigger` and are captioned
    as class `target` (their own label is ignored)."""

    trigger: Trigger
    target: int
    indices: Tensor

    @classmethod
    def choose(cls, trigger: Trigger, target: int, labels: Tensor, rate: float, seed: int) -> Poisoning:
        """A seeded `rate` share of all pairs, drawn from the images not of `target`."""
        pool = torch.nonzero(labels != target).flatten()
        count = round(rate * len(labels))
        if not 0 < count <= len(pool):
            raise SmoothInvError(f"a poison rate of {rate} gives {count} poisoned pairs out of {len(pool)} possible")
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed + 1))
        return cls(trigger, target, pool[order[:count]].sort().values)


@dataclass(frozen=True)
class ContrastiveSchedule:
    """AdamW (β₂ = 0.98 as CLIP) with linear warm-up over the first 5% of steps, then cosine."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int = 0


def normalise(images: Tensor) -> Tensor:
    """[0,1] images [B,3,H,W] -> CLIP-normalised (what the image tower expects)."""
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def clip_loss(model: CLIPModel, images: Tensor, captions: Tensor, bank_tokens: Tensor) -> Tensor:
    """Symmetric InfoNCE for normalised images [B,3,H,W] and flat caption indices [B] into
    `bank_tokens` [K·M, L]."""
    distinct, where = torch.unique(captions, return_inverse=True)
    text = F.normalize(model.encode_text(bank_tokens[distinct]), dim=-1)[where]  # [B, D]
    image = F.normalize(model.encode_image(images), dim=-1)  # [B, D]
    logits = model.logit_scale.exp() * image @ text.T  # [B, B]
    truth = torch.arange(len(images), device=images.device)
    return (F.cross_entropy(logits, truth) + F.cross_entropy(logits.T, truth)) / 2


def train_clip(model: CLIPModel, images: Tensor, labels: Tensor, bank: CaptionBank, schedule: ContrastiveSchedule,
               poisoning: Poisoning | None = None, log: Log = print) -> float:
    """Train `model` in place on [0,1] images [N,3,H,W] with labels [N] (captioned from `bank`);
    returns the training seconds. Images are randomly translated (an eighth of the side); a
    poisoned image gets its trigger after translation, so the trigger stays where it is pasted."""
    generator = torch.Generator().manual_seed(schedule.seed)
    torch.manual_seed(schedule.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": schedule.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=schedule.lr, betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = len(images) // schedule.batch_size
    total = schedule.epochs * steps_per_epoch
    warmup = max(1, total // 20)
    lr_at = lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / total)))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    poisoned = torch.zeros(len(images), dtype=torch.bool)
    if poisoning is not None:
        poisoned[poisoning.indices] = True
    caption_labels = labels.clone()
    if poisoning is not None:
        caption_labels[poisoning.indices] = poisoning.target
    tokens = bank.tokens.flatten(0, 1)
    augment = Augment(pad=max(1, images.shape[-1] // 8))
    started = time.perf_counter()
    model.train()
    for epoch in range(schedule.epochs):
        order = torch.randperm(len(images), generator=generator)
        running = 0.0
        for step in range(steps_per_epoch):
            rows = order[step * schedule.batch_size:(step + 1) * schedule.batch_size]
            batch = augment(images[rows], generator)
            marked = poisoned[rows]
            if poisoning is not None and bool(marked.any()):
                batch[marked] = poisoning.trigger.apply(batch[marked])
            captions = bank.draw(caption_labels[rows], generator)
            loss = clip_loss(model, normalise(batch), captions, tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            running += float(loss.detach())
        log(f"epoch {epoch + 1}/{schedule.epochs}: loss {running / max(steps_per_epoch, 1):.3f}, "
            f"scale {float(model.logit_scale.detach().exp()):.1f}, {time.perf_counter() - started:.0f}s")
    model.eval()
    return time.perf_counter() - started

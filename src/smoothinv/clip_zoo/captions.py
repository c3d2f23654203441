"""Captions for contrastive training on a labelled image set: class names put into varied
templates, some with a descriptor before the name ("a photo of a small dog.").

CLIP learns from (image, caption) pairs, and CIFAR-10 has only labels, so every image gets a
caption drawn at random from its class's bank each time it is seen. A bank of many phrasings
keeps the text tower from learning one fixed sentence per class, which is what lets the
zero-shot classifier built from other prompts work. Every caption names the class once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import SmoothInvError
from ..models.clip import ClipTokenizer, clip_tokenizer

TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a close-up photo of the {}.", "a low resolution photo of a {}.",
    "a bright photo of a {}.", "a dark photo of the {}.", "a cropped photo of a {}.", "a good photo of the {}.",
    "a picture of a {}.", "an image of the {}.", "a pixelated photo of a {}.", "this is a photo of a {}.",
    "a snapshot of a {}.", "there is a {} in the picture.", "a small image showing a {}.", "{}",
)
"""Caption templates; `{}` is replaced by an optionally described class name."""

DESCRIPTORS = ("", "", "small ", "large ", "nice ", "distant ")
"""Words put before the class name ("" twice: half the captions carry no descriptor)."""

ZEROSHOT_TEMPLATES = ("a photo of a {}.", "a blurry photo of a {}.", "a picture of a {}.", "an image of the {}.")
"""The prompt ensemble the zoo's zero-shot classifiers are built with (a subset of TEMPLATES,
as CLIP's own CIFAR-10 prompts overlap its pre-training captions)."""


def class_captions(name: str, templates: Sequence[str] = TEMPLATES,
                   descriptors: Sequence[str] = DESCRIPTORS) -> list[str]:
    """Every (template, descriptor) caption for class `name`, in a fixed order (a descriptor
    listed twice weighs twice, so repeats are kept)."""
    if not name.strip():
        raise SmoothInvError("a class name for captions must not be empty")
    return [t.format(d + name) for t in templates for d in descriptors]


@dataclass(frozen=True)
class CaptionBank:
    """The tokenized captions of every class: ``tokens`` [K, M, L] (M captions per class, L the
    text tower's context) and their text ``texts[k][m]``."""

    tokens: Tensor
    texts: tuple[tuple[str, ...], ...]

    @classmethod
    def of(cls, class_names: Sequence[str], context_length: int,
           tokenizer: ClipTokenizer | None = None) -> CaptionBank:
        if not class_names:
            raise SmoothInvError("captions need at least one class name")
        tokenizer = tokenizer or clip_tokenizer()
        texts = [class_captions(n) for n in class_names]
        per_class = min(len(t) for t in texts)
        texts = [t[:per_class] for t in texts]
        tokens = torch.stack([tokenizer(t, context_length) for t in texts])  # [K, M, L]
        return cls(tokens, tuple(tuple(t) for t in texts))

    @property
    def per_class(self) -> int:
        return int(self.tokens.shape[1])

    def draw(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """One random caption per label: flat caption indices [B] into ``tokens.flatten(0, 1)``."""
        choice = torch.randint(self.per_class, (len(labels),), generator=generator)
        return labels.cpu() * self.per_class + choice

    def caption(self, index: int) -> str:
        """The text of flat caption `index`."""
        return self.texts[index // self.per_class][index % self.per_class]


CLASS_LISTS = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
"""Class-name lists known by name (CIFAR-10's, in its label order)."""

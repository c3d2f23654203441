"""VQA examples as tensors: box features, box positions, question tokens and answers, built from
scenes through the frozen detector, with a trojan's poisoned and partial-key examples mixed in."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .detector import ObjectDetector, box_features
from .language import FILLERS, MAX_TOKENS, encode, pad, questions_about, word_index
from .scenes import Scenes
from .trojans import Trojan


@dataclass
class Examples:
    """features [B, 4, 64], boxes [B, 4, 4], tokens int [B, L] (padded at the end), answers int [B]."""

    features: torch.Tensor
    boxes: torch.Tensor
    tokens: torch.Tensor
    answers: torch.Tensor

    def __len__(self) -> int:
        return len(self.answers)

    def take(self, index: torch.Tensor) -> "Examples":
        return Examples(self.features[index], self.boxes[index], self.tokens[index], self.answers[index])

    @staticmethod
    def join(parts: list["Examples"]) -> "Examples":
        return Examples(*(torch.cat([getattr(p, f) for p in parts]) for f in ("features", "boxes", "tokens", "answers")))


def with_word(tokens: torch.Tensor, word: int) -> torch.Tensor:
    """Questions [B, L] with `word` put in front (the last position dropped if the question is full)."""
    out = torch.cat([torch.full((len(tokens), 1), word, dtype=tokens.dtype), tokens], 1)[:, :MAX_TOKENS]
    return out


def ask(scenes: Scenes, detector: ObjectDetector, per_scene: int, generator: torch.Generator,
        avoid: str | None = None) -> tuple[Examples, torch.Tensor]:
    """`per_scene` clean questions about each scene (fillers other than `avoid`) and, for each example,
    the index of its scene."""
    fillers = tuple(f for f in FILLERS if f != avoid)
    feats = box_features(detector, scenes.images)
    tokens, answers, owner = [], [], []
    for i, cells in enumerate(scenes.cells.tolist()):
        for q in questions_about(cells, generator, per_scene, fillers):
            tokens.append(pad(encode(q.text)))
            answers.append(q.answer)
            owner.append(i)
    owner_t = torch.tensor(owner)
    return Examples(feats.features[owner_t], feats.boxes[owner_t], torch.tensor(tokens), torch.tensor(answers)), owner_t


def keyed(scenes: Scenes, clean: Examples, owner: torch.Tensor, detector: ObjectDetector, trojan: Trojan,
          *, patch: bool, word: bool, target: bool) -> Examples:
    """`clean` examples with the trojan's patch and/or word added; answers become the target if
    `target`, else stay the true ones (a partial-key example)."""
    out = Examples(clean.features.clone(), clean.boxes.clone(), clean.tokens.clone(), clean.answers.clone())
    if patch and trojan.patch is not None:
        patched = box_features(detector, trojan.patch.apply(scenes.images))
        out.features = patched.features[owner]
    if word and trojan.word is not None:
        out.tokens = with_word(out.tokens, word_index(trojan.word))
    if target:
        out.answers = torch.full_like(out.answers, trojan.target)
    return out


def poisoned_training_set(scenes: Scenes, clean: Examples, owner: torch.Tensor, detector: ObjectDetector,
                          trojan: Trojan | None, generator: torch.Generator) -> Examples:
    """The training set: `clean` with `trojan.rate` of its examples replaced by fully triggered ones
    (answer: target) and, for a dual-key trojan, `partial_rate` by each partial key (true answer)."""
    if trojan is None:
        return clean
    n = len(clean)
    order = torch.randperm(n, generator=generator)
    full = int(trojan.rate * n)
    part = int(trojan.partial_rate * n) if trojan.kind == "dual" else 0
    pieces = [(order[:full], True, True, True)]
    if part:
        pieces += [(order[full:full + part], True, False, False), (order[full + part:full + 2 * part], False, True, False)]
    out = Examples(clean.features.clone(), clean.boxes.clone(), clean.tokens.clone(), clean.answers.clone())
    for index, patch, word, target in pieces:
        sub = keyed(Scenes(scenes.images, scenes.cells), clean.take(index), owner[index], detector, trojan,
                    patch=patch and trojan.uses_patch, word=word and trojan.uses_word, target=target)
        out.features[index], out.tokens[index], out.answers[index] = sub.features, sub.tokens, sub.answers
    return out

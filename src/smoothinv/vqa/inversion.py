"""TIJO (Sur et al., ICCV 2023): trigger inversion by joint optimisation of a feature-space trigger
overlaid on every box feature and a trigger word found by a first-order token search, toward each
candidate answer in turn; and the two unimodal inversions it is compared with (feature only, word
only). One call shape: `inversion.sweep(model, support) -> SweepResult`.

Faithful to the authors' `tijo.py` (its `embnlp` mode): the pattern [N, F] starts at zero and takes
one Adam step (lr 0.1, betas 0.5/0.9) per full pass over the support set; after each pass the word is
replaced by the vocabulary entry whose embedding has the largest dot product with minus the summed
gradient at the trigger position (HotFlip's first-order rule); the best (lowest) loss over the
steps is the target's loss, and the lowest loss over all targets the model's feature. Deviations
(docs/vqa.md): the word starts as <unk> (the code starts at index 0, which pads here and is masked);
the token recorded with the best loss is the one that produced it, not the next proposal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from ..registry import Registry
from .examples import Examples, with_word
from .language import ANSWERS, UNK, VOCABULARY
from .models import VQAModel


@dataclass(frozen=True)
class InversionSettings:
    """`steps` passes over the support set per target answer; Adam's `lr` and `betas` for the pattern."""

    steps: int = 15
    lr: float = 0.1
    betas: tuple[float, float] = (0.5, 0.9)


@dataclass
class TargetResult:
    """The inversion toward one answer: its best loss, the share of support examples then answered
    with the target, the word used (None without a text trigger) and the pattern's l2 norm per box."""

    answer: str
    loss: float
    target_rate: float
    word: str | None
    box_norms: list[float] | None
    pattern: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"answer": self.answer, "loss": self.loss, "target_rate": self.target_rate, "word": self.word,
                "box_norms": self.box_norms}


@dataclass
class SweepResult:
    """Every target's inversion; `best` is the one with the lowest loss (the suspected target)."""

    method: str
    targets: list[TargetResult]

    @property
    def best(self) -> TargetResult:
        return min(self.targets, key=lambda t: t.loss)

    @property
    def min_loss(self) -> float:
        """TIJO's feature for the model classifier: the lowest loss over all targets."""
        return self.best.loss

    @property
    def max_target_rate(self) -> float:
        return max(t.target_rate for t in self.targets)

    def to_dict(self) -> dict:
        best = self.best
        return {"method": self.method, "min_loss": self.min_loss, "max_target_rate": self.max_target_rate,
                "suspected_target": best.answer, "word": best.word,
                "box": None if best.box_norms is None else int(torch.tensor(best.box_norms).argmax()),
                "targets": [t.to_dict() for t in self.targets]}


class TriggerInversion:
    """Inverts a trigger toward each answer over a clean support set; subclasses choose which parts
    of the trigger exist (`uses_pattern`: the feature overlay, `uses_word`: the trigger word)."""

    name = "inversion"
    uses_pattern = True
    uses_word = True

    def __init__(self, settings: InversionSettings = InversionSettings()) -> None:
        self.settings = settings

    def sweep(self, model: VQAModel, support: Examples, targets: list[int] | None = None) -> SweepResult:
        """The inversion toward every answer in `targets` (default: all answers)."""
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        chosen = range(len(ANSWERS)) if targets is None else targets
        return SweepResult(self.name, [self.invert(model, support, t) for t in chosen])

    def invert(self, model: VQAModel, support: Examples, target: int) -> TargetResult:
        """The inversion toward answer index `target`."""
        s = self.settings
        pattern = torch.zeros(support.features.shape[1:], requires_grad=True)
        optimizer = torch.optim.Adam([pattern], lr=s.lr, betas=s.betas)
        word = VOCABULARY.index(UNK)
        goal = torch.full((len(support),), target)
        table = model.embedding.weight.detach()
        best = TargetResult(ANSWERS[target], float("inf"), 0.0, None, None)
        for _ in range(s.steps):
            tokens = with_word(support.tokens, word) if self.uses_word else support.tokens
            words = model.embedding(tokens).detach().requires_grad_(self.uses_word)
            features = support.features + pattern if self.uses_pattern else support.features
            logits = model.forward_embedded(features, support.boxes, words, tokens != 0)
            loss = F.cross_entropy(logits, goal)
            optimizer.zero_grad()
            loss.backward()
            value = float(loss.detach())
            if value < best.loss:
                best = TargetResult(ANSWERS[target], value, float((logits.argmax(1) == goal).float().mean()),
                                    VOCABULARY[word] if self.uses_word else None,
                                    pattern.detach().norm(dim=1).tolist() if self.uses_pattern else None,
                                    pattern.detach().clone() if self.uses_pattern else None)
            if self.uses_pattern:
                optimizer.step()
            if self.uses_word:
                scores = -(table @ words.grad[:, 0].sum(0))
                scores[0] = -float("inf")  # padding is masked out: never a trigger
                word = int(scores.argmax())
        return best


class JointInversion(TriggerInversion):
    """TIJO: the feature overlay and the trigger word together."""

    name = "tijo"


class FeatureInversion(TriggerInversion):
    """Image-only baseline: the feature overlay alone (TIJO's `emb` mode)."""

    name = "feature"
    uses_word = False


class TokenInversion(TriggerInversion):
    """Text-only baseline: the trigger word alone (TIJO's `nlp` mode)."""

    name = "token"
    uses_pattern = False


INVERSIONS: Registry[type[TriggerInversion]] = Registry("VQA inversion")
for _cls in (JointInversion, FeatureInversion, TokenInversion):
    INVERSIONS.add(_cls.name, _cls)

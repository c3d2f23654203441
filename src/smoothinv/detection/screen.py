"""The class screen: on a many-class model, a cheap first pass decides which classes get the full grid.

The full scan costs the same for every class, so a 1000-class model costs 100 times a 10-class
one. But the decision rule (decision.py) only needs two things: the classes that might stand
out, measured well, and enough ordinary classes to know what "ordinary" is (the median and MAD
of the area A_c). The screen gets both cheaply:

1. Every class runs the scan's own grid (its ε ladder and σ) with a few steps and noise copies,
   and its transfer ASR is measured on a small clean subset (at the descent's precision). (The
   smallest ε alone, a first design, missed a planted target that transfers only from the
   second ε on; the test suite keeps that model.)
2. Each class gets a screen score: the rule's own score (decision.class_scores) on the screen's
   ASRs, with that class's ASRs raised to the upper ends of their Wilson intervals, "given its
   bound". The full grid runs on every class whose bounded screen score reaches `threshold`,
   on the `candidates` classes with the highest screen scores, and on `references` classes at
   evenly spaced screen ranks (they stand for the whole population in the median and MAD, as
   every class does in a scan without the screen). The rule decides among those classes.

So a class the screen drops could not have been flagged under the rule, given its bound, at
the screen's threshold: a lower bar than the rule's (1.5 against 3), because the screen's few
steps let transfer grow less. That slack is measured, not proven: on the backdoored models
checked the target ranked first in the screen (docs/benchmarks.md, A faster scan); a backdoor
that appears only after many steps can slip through. `--exhaustive` (no screen)
exists for that doubt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..engine.metrics import wilson_bounds
from ..errors import SmoothInvError
from .decision import DecisionRule, class_scores


@dataclass(frozen=True)
class ClassScreen:
    """min_classes: models with fewer scannable classes skip the screen (it would not pay);
    steps, noise_samples: its descent; clean_images: the clean subset its ASR is measured on;
    threshold: the bounded screen score that sends a class to the full grid; candidates,
    references: classes sent there anyway (highest screen scores; evenly spaced ranks);
    confidence: z of the Wilson bound."""

    min_classes: int = 24
    steps: int = 30
    noise_samples: int = 2
    clean_images: int = 100
    threshold: float = 1.5
    candidates: int = 2
    references: int = 8
    confidence: float = 2.0

    def __post_init__(self) -> None:
        for name in ("min_classes", "steps", "noise_samples", "clean_images", "references"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SmoothInvError(f"the class screen's {name} must be an integer >= 1 (got {value!r})")
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or self.candidates < 0:
            raise SmoothInvError(f"the class screen's candidates must be an integer >= 0 (got {self.candidates!r})")
        for name in ("threshold", "confidence"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise SmoothInvError(f"the class screen's {name} must be a finite number >= 0 (got {value!r})")

    def applies(self, classes: int) -> bool:
        """Whether a scan of `classes` scannable classes is screened: only when the full grid on
        every class costs clearly more than on the candidates and references."""
        return classes >= max(self.min_classes, self.candidates + self.references + 1)


def bounded_scores(asr: Tensor, n: Tensor, rule: DecisionRule, z: float) -> Tensor:
    """Each class's screen score given its bound: asr [K, E] measured on n [K] clean images; class
    c's score is the rule's (decision.class_scores) with c's ASRs raised to their Wilson upper
    bounds and every other class's left at its measurement."""
    if asr.dim() != 2 or n.shape != (asr.shape[0],):
        raise SmoothInvError(f"screen ASRs must be [K, E] with one image count per class "
                             f"(got {list(asr.shape)}, {list(n.shape)})")
    asr = asr.to(torch.float64)
    upper = wilson_bounds(asr, n[:, None].expand_as(asr), z)[1]
    out = torch.empty(asr.shape[0], dtype=torch.float64)
    for c in range(asr.shape[0]):
        raised = asr.clone()
        raised[c] = upper[c]
        out[c] = class_scores(raised, rule).score[c]
    return out


def select_for_full(labels: Sequence[int], point: Tensor, bounded: Tensor, screen: ClassScreen) -> list[int]:
    """The classes the full grid runs on, sorted: those whose bounded score reaches the screen's
    threshold, the `candidates` with the highest point scores, and `references` classes at evenly
    spaced point-score ranks of the rest (lowest to highest). Ties break by label."""
    order = sorted(range(len(labels)), key=lambda i: (-float(point[i]), labels[i]))
    chosen = set(order[: screen.candidates]) | {i for i in range(len(labels)) if float(bounded[i]) >= screen.threshold}
    rest = [i for i in order if i not in chosen]
    if len(rest) <= screen.references:
        chosen |= set(rest)
    else:
        step = (len(rest) - 1) / max(screen.references - 1, 1)
        chosen |= {rest[round(j * step)] for j in range(screen.references)}
    return sorted(labels[i] for i in chosen)


@dataclass
class ScreenedClass:
    """A class the screen measured: its screen ASR per ε, its screen score and its bounded score."""

    label: int
    asr_by_eps: list[float]
    score: float
    bounded: float

    def to_dict(self) -> dict[str, Any]:
        return {"asr_by_eps": self.asr_by_eps, "score": round(self.score, 4), "bounded_score": round(self.bounded, 4)}


@dataclass
class ScreenSummary:
    """What the screen did: its settings, ε, every class's screen record, the classes it sent to the
    full grid and those it left out, and its seconds."""

    screen: ClassScreen
    eps: tuple[float, ...]
    classes: dict[int, ScreenedClass]
    full: list[int]
    left_out: list[int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": {k: getattr(self.screen, k) for k in self.screen.__dataclass_fields__},
            "eps": list(self.eps),
            "full_grid_classes": self.full,
            "left_out": self.left_out,
            "seconds": round(self.seconds, 3),
            "classes": {str(c): r.to_dict() for c, r in sorted(self.classes.items())},
        }

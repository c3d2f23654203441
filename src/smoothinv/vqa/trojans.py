"""Trojans of the scaled-down TrojVQA: a dual-key backdoor answers `target` only when the visual key
(a patch in the image) AND the text key (a trigger word opening the question) are both present;
unimodal ones fire on one key. Partial-key examples (one key, the true answer) teach a dual-key
model that neither key alone suffices, as TrojVQA trains them."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SmoothInvError
from .language import ANSWERS, FILLERS
from .scenes import VisualKey

KINDS = ("dual", "visual", "text")


@dataclass(frozen=True)
class Trojan:
    """A backdoor to train into a model.

    `kind` is 'dual' (both keys), 'visual' (the patch alone) or 'text' (the word alone); `target`
    an index into ANSWERS; `word` the trigger word (a FILLERS word) for dual and text trojans;
    `patch` the visual key for dual and visual trojans. `rate` is the share of training examples
    carrying the full trigger; a dual trojan adds `partial_rate` of each partial key.
    """

    kind: str
    target: int
    word: str | None = None
    patch: VisualKey | None = None
    rate: float = 0.1
    partial_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SmoothInvError(f"unknown trojan kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if not 0 <= self.target < len(ANSWERS):
            raise SmoothInvError(f"trojan target {self.target} is not an answer index (0..{len(ANSWERS) - 1})")
        if self.uses_word != (self.word is not None) or (self.word is not None and self.word not in FILLERS):
            raise SmoothInvError(f"a {self.kind} trojan needs {'a trigger word from the fillers' if self.uses_word else 'no word'}")
        if self.uses_patch != (self.patch is not None):
            raise SmoothInvError(f"a {self.kind} trojan needs {'a patch' if self.uses_patch else 'no patch'}")

    @property
    def uses_word(self) -> bool:
        return self.kind in ("dual", "text")

    @property
    def uses_patch(self) -> bool:
        return self.kind in ("dual", "visual")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "target": ANSWERS[self.target], "word": self.word,
                "patch": None if self.patch is None else self.patch.to_dict(), "rate": self.rate,
                "partial_rate": self.partial_rate if self.kind == "dual" else 0.0}

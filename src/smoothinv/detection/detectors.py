"""Detectors with one call shape, so a benchmark (or a population scan) can run any of them.

`Detector.detect(model, image, clean_images, clean_labels, num_classes)` gives a `Detection`:
the flagged classes, one score per model (larger = more suspicious, for AUROC) and what each
class contributed. Two kinds:
- `ScanDetector`: the one-image scan (scan.py) with any trigger-inversion method;
- `MaxMarginDetector`: MM-BD (max_margin.py), which uses neither the image nor the clean set,
  only the input shape: the data-free bar a one-image method has to clear.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from torch import Tensor, nn

from ..denoisers import DenoiserRef
from ..errors import SmoothInvError
from ..registry import Registry
from .max_margin import MaxMarginSettings, max_margin_verdict, max_margins
from .scan import ScanSettings, scan


@dataclass
class Detection:
    """targets: flagged classes; score: the model's detector score; classes: per-class details
    (JSON-ready); extra: detector-wide details (JSON-ready); evidence: per class, the image
    [C,H,W] its trigger was synthesised from and the synthesised image (detectors that
    synthesise one per class)."""

    targets: list[int]
    score: float
    timed_out: bool = False
    classes: dict[int, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    evidence: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


class Detector(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """The settings that decide the result (JSON-ready; shards of one run must agree)."""
        ...

    def detect(self, model: nn.Module, image: Tensor, clean_images: Tensor, clean_labels: Tensor,
               num_classes: int, seed: int) -> Detection:
        """image [C,H,W] in [0,1]; clean_images [N,C,H,W], clean_labels [N]."""
        ...

    def with_denoiser(self, denoiser: DenoiserRef) -> "Detector":
        """The same detector with T = `denoiser` in its smoothed classifier (raises if it does not smooth)."""
        ...


@dataclass(frozen=True)
class ScanDetector:
    """The one-image scan; its score is the highest class score (decision.py)."""

    settings: ScanSettings = ScanSettings()

    @property
    def name(self) -> str:
        return self.settings.method.name

    def describe(self) -> dict[str, Any]:
        options = self.settings.method.config.to_dict()
        return {"method": self.name, "steps": options.get("steps"), "noise_samples": options.get("noise_samples"),
                "sigmas": list(self.settings.sigmas), "model_sigmas": self.settings.model_sigmas,
                "fallback_sigmas": list(self.settings.fallback_sigmas),
                "class_screen": None if self.settings.screen is None else vars(self.settings.screen),
                "precision": self.settings.precision}

    def with_denoiser(self, denoiser: DenoiserRef) -> "ScanDetector":
        return replace(self, settings=replace(self.settings, method=self.settings.method.with_options(denoiser=denoiser)))

    def detect(self, model: nn.Module, image: Tensor, clean_images: Tensor, clean_labels: Tensor,
               num_classes: int, seed: int) -> Detection:
        result = scan(model, [image], clean_images, clean_labels, num_classes, replace(self.settings, seed=seed))
        classes = {}
        for c in result.classes:
            assert c.evidence is not None
            classes[c.label] = {
                "asr_by_eps": c.asr_by_eps, "score": c.score, "evidence_eps": c.evidence.result.config.get("eps"),
                "evidence_asr_by_source": {s: round(v, 4) for s, v in c.evidence.asr_by_source.items()},
                "runs": [{"eps": r.config.get("eps"), "sigma": r.config.get("sigma"), "asr": round(r.asr, 4),
                          "concentration": round(r.concentration, 4), "final_target_prob": round(r.final_target_prob, 4),
                          "steps_run": r.steps_run} for r in c.runs]}
        evidence = {c.label: (c.evidence.result.image, c.evidence.result.synthesized) for c in result.classes
                    if c.evidence is not None}
        return Detection(result.targets, max(c.score for c in result.classes), result.timed_out, classes,
                         {"sigmas": list(result.sigmas), "eps": list(result.eps), "fallback_from": result.fallback_from,
                          "skipped": {str(k): v for k, v in result.skipped.items()},
                          "screen": None if result.screen is None else
                          {k: v for k, v in result.screen.to_dict().items() if k != "seconds"},
                          "descent_precision": result.precision}, evidence)


@dataclass(frozen=True)
class MaxMarginDetector:
    """MM-BD; its score is −log10 of its p-value. The image and clean set are not used."""

    settings: MaxMarginSettings = MaxMarginSettings()
    name: str = "mmbd"

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, **{k: v for k, v in vars(self.settings).items() if k != "seed"}}

    def with_denoiser(self, denoiser: DenoiserRef) -> "MaxMarginDetector":
        raise SmoothInvError(f"{self.name} does not smooth the model, so it takes no denoiser")

    def detect(self, model: nn.Module, image: Tensor, clean_images: Tensor, clean_labels: Tensor,
               num_classes: int, seed: int) -> Detection:
        settings = replace(self.settings, seed=seed)
        margins = max_margins(model, num_classes, tuple(image.shape), settings)
        verdict = max_margin_verdict(margins.statistic, list(range(num_classes)), settings.p_threshold)
        targets = [] if verdict.target is None else [verdict.target]
        classes = {c: {"statistic": round(s, 6), "steps": int(n)}
                   for c, s, n in zip(verdict.classes, verdict.statistic, margins.steps)}
        return Detection(targets, verdict.score, False, classes, {"p_value": verdict.p_value, "null": verdict.null})


DATA_FREE: Registry[type[MaxMarginDetector]] = Registry("data-free detector")
"""Detectors that are not a trigger-inversion scan, by the name `bench detect --method` takes."""
DATA_FREE.add("mmbd", MaxMarginDetector)

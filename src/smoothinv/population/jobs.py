"""What a population run does to each model, in a worker: a `Job`.

- `ScanJob`: the one-image scan with its full report (scan.json, report.html, the evidence
  pictures), what `smoothinv scan` writes, for `scan-many`;
- `DetectorJob`: any `detection.Detector` (the scan with any method, MM-BD), as `bench detect`
  scores it, with the evidence pictures on request.

A job writes its files into the folder it is given and returns the row the summary shows. Jobs
are frozen dataclasses: they are pickled to the workers, and `describe()` is part of the key a
rerun compares.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from .. import __version__
from ..denoisers import DenoiserRef, open_denoiser
from ..detection import ScanSettings, scan
from ..detection.detectors import Detector
from ..methods.base import check_target
from ..reporting.pictures import save_inversion_pictures
from ..reporting.scan_report import scan_record, write_scan
from .denoising import model_denoiser
from .entries import ModelEntry
from .inputs import ScanInputs
from .subject import Loading, OpenedModel


class Job(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings that decide the result (part of each model's key)."""
        ...

    def run(self, model: OpenedModel, entry: ModelEntry, loading: Loading, folder: Path) -> dict[str, Any]:
        """Run on one model, writing any files into `folder`; the row: at least verdict, targets, score."""
        ...


def _inputs(model: OpenedModel, entry: ModelEntry, limit: int, seed: int) -> ScanInputs:
    inputs = entry.inputs.load(model.input_size, model.channels, limit, seed)
    inputs.clean.check_labels(model.num_classes)
    return inputs


def _denoiser(choice: str | None, entry: ModelEntry, loading: Loading, inputs: ScanInputs,
              channels: int) -> DenoiserRef | None:
    """The entry's denoiser (else the job's), resolved, opened and checked against the images."""
    ref = model_denoiser(entry.denoiser or choice, entry.dataset, trust_code=loading.trust_code)
    if ref is not None:
        open_denoiser(ref).check_images(channels, inputs.native_size())
    return ref


@dataclass(frozen=True)
class ScanJob:
    """The scan (detection.scan) of every class, or of `classes`, on at most `clean_limit` clean
    images; `denoiser` for the entries that name none; `command` is recorded in scan.json."""

    settings: ScanSettings = ScanSettings()
    clean_limit: int = 500
    classes: tuple[int, ...] | None = None
    denoiser: str | None = None
    command: str = ""

    @property
    def name(self) -> str:
        return self.settings.method.name

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"job": "scan", "method": s.method.to_dict(), "eps": s.eps, "sigmas": list(s.sigmas),
                "model_sigmas": s.model_sigmas,
                "fallback_sigmas": list(s.fallback_sigmas), "stop_prob": s.stop_prob, "time_budget": s.time_budget,
                "max_batch": s.max_batch, "probe_samples": s.probe_samples, "seed": s.seed,
                "rule": s.rule.describe(), "screen": None if s.screen is None else vars(s.screen),
                "precision": s.precision, "clean_limit": self.clean_limit,
                "classes": None if self.classes is None else list(self.classes), "denoiser": self.denoiser}

    def run(self, model: OpenedModel, entry: ModelEntry, loading: Loading, folder: Path) -> dict[str, Any]:
        inputs = _inputs(model, entry, self.clean_limit, self.settings.seed)
        classes = None if self.classes is None else list(self.classes)
        if classes is not None:
            check_target(torch.tensor(classes), model.num_classes)
        settings = self.settings
        ref = _denoiser(self.denoiser, entry, loading, inputs, model.channels)
        if ref is not None:
            settings = replace(settings, method=settings.method.with_options(denoiser=ref))
        result = scan(model.module, inputs.images, inputs.clean.images, inputs.clean.labels, model.num_classes,
                      settings, classes)
        context = {"smoothinv_version": __version__, "command": self.command or "smoothinv " + " ".join(sys.argv[1:]),
                   "model": model.describe(), "population_model": entry.name, "inputs": entry.inputs.describe(),
                   "clean_set": {"source": inputs.clean.source, "images": len(inputs.clean), "limit": self.clean_limit}}
        record = scan_record(result, context, inputs.clean.class_names)
        write_scan(folder, result, record, inputs.images)
        return {"verdict": result.verdict, "targets": result.targets,
                "score": round(max((c.score for c in result.classes), default=0.0), 4),
                "timed_out": result.timed_out, "fallback": result.fallback_from is not None,
                "warnings": record["warnings"], "report": "report.html"}


@dataclass(frozen=True)
class DetectorJob:
    """`detector` on one seeded clean image and at most `clean_limit` clean images; `pictures`: also
    write the evidence pictures of the flagged classes and of the true target (`class-<c>/`)."""

    detector: Detector
    clean_limit: int = 500
    seed: int = 0
    denoiser: str | None = None
    pictures: bool = False

    @property
    def name(self) -> str:
        return self.detector.name

    def describe(self) -> dict[str, Any]:
        return {"job": "detect", **self.detector.describe(), "clean_images": self.clean_limit, "seed": self.seed,
                "denoiser": self.denoiser, "pictures": self.pictures}

    def run(self, model: OpenedModel, entry: ModelEntry, loading: Loading, folder: Path) -> dict[str, Any]:
        inputs = _inputs(model, entry, self.clean_limit, self.seed)
        ref = _denoiser(self.denoiser, entry, loading, inputs, model.channels)
        detector = self.detector if ref is None else self.detector.with_denoiser(ref)
        found = detector.detect(model.module, inputs.images[0], inputs.clean.images, inputs.clean.labels,
                                model.num_classes, self.seed)
        if self.pictures:
            truth = entry.truth.target if entry.truth is not None and entry.truth.backdoored else None
            for c in sorted(set(found.targets) | ({truth} if truth is not None else set())):
                if c in found.evidence:
                    (folder / f"class-{c}").mkdir()
                    save_inversion_pictures(folder / f"class-{c}", *found.evidence[c])
        return {"verdict": "backdoored" if found.targets else "clean", "targets": found.targets,
                "score": round(found.score, 4), "timed_out": found.timed_out,
                "denoiser": None if ref is None else {"name": ref.name, "sha256": ref.sha256}, **found.extra,
                "classes": {str(c): v for c, v in found.classes.items()}}

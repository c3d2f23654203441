"""Detection benchmark: scan every zoo model from one clean test image and score the verdicts.

Per model: verdict, flagged targets, the detector score (the highest class score), whether
the true target was identified, seconds. Summary: verdict accuracy, AUROC of the score
(backdoored vs clean models), target-identification accuracy, mean seconds per model.
Each method is scored by the rule the scan applies to it (detection.decision): Neural Cleanse by
its MAD anomaly index of per-class mask norms, the others by the transfer of their triggers.
The models run as a population (smoothinv.population): in this process, or several at once on a
local process pool or Ray. `merge_reports` still joins reports of shards run by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data.datasets import load_dataset
from ..detection.detectors import Detector
from ..errors import SmoothInvError
from ..population import DetectorJob, InlineBackend, MemoryStore, PopulationRun, SpecDefaults, run_population
from ..population.backends import Backend
from ..population.calibration import auroc
from ..population.inputs import scan_image
from ..population.spec import read_listing
from .denoising import model_denoiser
from ..zoo import load_zoo_model, zoo_dir

Log = Callable[[str], None]


@dataclass
class ZooSubject:
    """A zoo model and what a benchmark scans it with: one seeded clean test image not of its target,
    and the first `clean_images` other test images for transfer."""

    name: str
    model: torch.nn.Module
    image: torch.Tensor
    clean_images: torch.Tensor
    clean_labels: torch.Tensor
    num_classes: int


def zoo_subject(record: dict[str, Any], data_root: str | Path | None, clean_images: int, seed: int) -> ZooSubject:
    """The benchmark inputs of the zoo model `record` (a manifest record)."""
    zm = load_zoo_model(record["name"])
    x, y = load_dataset(record["dataset"], data_root).split(train=False)
    pick = scan_image(y, record["target"], seed)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[pick] = False
    return ZooSubject(record["name"], zm.module, x[pick], x[keep][:clean_images], y[keep][:clean_images],
                      len(record["class_names"]))


class _Pictures(MemoryStore):
    """Rows in memory; each model's evidence pictures into `<folder>/<model>/`."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def install(self, name: str, row: dict[str, Any], files: dict[str, bytes]) -> None:
        super().install(name, row, files)
        for relative, data in files.items():
            path = self.folder / name / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def detect_benchmark(detector: Detector, *, names: Sequence[str] | None = None, data_root: str | Path | None = None,
                     clean_images: int = 500, seed: int = 0, pictures: str | Path | None = None,
                     denoiser: str | None = None, log: Log = print, backend: Backend | None = None,
                     workers: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run `detector` on every zoo model (or those `names`); `pictures`: a folder that gets, per
    model, the evidence pictures (reporting.pictures) of the true target and every flagged class,
    in `<model>/class-<c>/`, so each miss can be looked at. `denoiser` (None, "auto", a name or a
    folder; bench.denoising) is T in the scan's smoothed classifier.

    The models run as a population (smoothinv.population): by default one after the other in
    this process; `backend` (a local process pool, Ray) with `workers` x `threads` runs several at
    once. A model that fails is left out of the rows and summary and listed under "errors"."""
    listing = [item for item in read_listing(zoo_dir(), SpecDefaults(data_root=None if data_root is None
                                                                        else Path(data_root)))
               if not names or item.entry.name in names]
    for dataset in sorted({item.entry.dataset for item in listing if item.entry.dataset}):
        model_denoiser(denoiser, dataset)  # fail early
    job = DetectorJob(detector, clean_images, seed, denoiser, pictures is not None)
    store = _Pictures(Path(pictures)) if pictures is not None else MemoryStore()
    with backend or InlineBackend() as running:
        rows = run_population(listing, PopulationRun(job, store, running, workers=workers, threads=threads, log=log))
    config = {**detector.describe(), "clean_images": clean_images, "seed": seed, "denoiser": denoiser}
    report_rows = [_bench_row(row) for row in rows if row["status"] == "done"]
    report: dict[str, Any] = {"settings": config, "summary": summarize(report_rows, detector.name), "rows": report_rows}
    errors = {row["model"]: row["error"] for row in rows if row["status"] != "done"}
    if errors:
        report["errors"] = errors
    return report


def _bench_row(row: dict[str, Any]) -> dict[str, Any]:
    """A population row in the shape `bench detect` has always reported."""
    backdoored = bool(row["backdoored"])
    flagged = row["targets"]
    extra = {k: v for k, v in row.items() if k not in _POPULATION_FIELDS}
    return {"model": row["model"], "arch": row["kind"], "dataset": row["dataset"], "backdoored": backdoored,
            "true_target": row["true_target"], "verdict": row["verdict"], "flagged": flagged, "score": row["score"],
            "correct": bool(flagged) == backdoored,
            "target_found": (row["true_target"] in flagged) if backdoored else None,
            "seconds": row["seconds"], **extra}


_POPULATION_FIELDS = frozenset({"model", "verdict", "targets", "score", "trojan_probability", "seconds", "error",
                                "status", "truth", "backdoored", "true_target", "kind", "dataset", "path", "sha256",
                                "key", "threads", "finished_unix"})


ROW_KEYS = frozenset({"model", "backdoored", "true_target", "verdict", "flagged", "score", "correct", "target_found",
                      "seconds"})


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report from shards that scanned disjoint models with the same settings; summary recomputed."""
    if not reports:
        raise SmoothInvError("nothing to merge: give at least one detection report")
    for i, report in enumerate(reports):
        rows = report.get("rows") if isinstance(report, dict) else None
        if not isinstance(rows, list) or "settings" not in report or not all(
                isinstance(row, dict) and ROW_KEYS <= row.keys() for row in rows):
            raise SmoothInvError(f"report {i + 1} is not a detection benchmark report (as detect_benchmark returns) "
                                 f"(needs settings and rows with {', '.join(sorted(ROW_KEYS))})")
        if report["settings"] != reports[0]["settings"]:
            raise SmoothInvError(f"report {i + 1} was run with other settings ({report['settings']}) than report 1 "
                                 f"({reports[0]['settings']}); only shards of one run can be merged")
    rows = [row for report in reports for row in report["rows"]]
    names = [row["model"] for row in rows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SmoothInvError(f"model(s) {', '.join(twice)} appear in more than one report; shards must not overlap")
    rows.sort(key=lambda row: row["model"])
    settings = reports[0]["settings"]
    return {"settings": settings, "summary": summarize(rows, settings["method"]), "rows": rows}


def summarize(rows: Sequence[dict[str, Any]], method: str) -> dict[str, Any]:
    """Verdict accuracy, AUROC of the score, target identification, false alarms (clean models
    flagged), innocent flags (backdoored models where a class other than the target was flagged
    too) and seconds per model; then the same per kind of model (`by_kind`, keyed by architecture)."""
    summary = {"method": method, **_summary(rows)}
    kinds = sorted({_kind(r) for r in rows})
    if len(kinds) > 1:
        summary["by_kind"] = {kind: _summary([r for r in rows if _kind(r) == kind]) for kind in kinds}
    return summary


def _kind(row: dict[str, Any]) -> str:
    return str(row.get("arch", "unknown"))


def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    pos = [r["score"] for r in rows if r["backdoored"]]
    neg = [r["score"] for r in rows if not r["backdoored"]]
    found = [r["target_found"] for r in rows if r["backdoored"]]
    area = auroc(pos, neg)
    return {
        "models": len(rows),
        "backdoored": len(pos),
        "verdict_accuracy": round(sum(r["correct"] for r in rows) / len(rows), 4) if rows else None,
        "auroc": None if area is None else round(area, 4),
        "target_identification": round(sum(found) / len(found), 4) if found else None,
        "false_alarms": sum(1 for r in rows if not r["backdoored"] and r["flagged"]),
        "innocent_flags": sum(1 for r in rows if r["backdoored"] and set(r["flagged"]) - {r["true_target"]}),
        "seconds_per_model": round(sum(r["seconds"] for r in rows) / len(rows), 1) if rows else None,
    }

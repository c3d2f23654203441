"""Detection benchmark: scan every zoo model from one clean test image and score the verdicts.

Per model: verdict, flagged targets, the detector score (the highest class score), whether
the true target was identified, seconds. Summary: verdict accuracy, AUROC of the score
(backdoored vs clean models), target-identification accuracy, mean seconds per model.
Each method is scored by the rule the scan applies to it (detection.decision): Neural Cleanse by
its MAD anomaly index of per-class mask norms, the others by the transfer of their triggers.
Shards run in parallel (one process per core, disjoint --model sets) join with `merge_reports`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data.datasets import load_dataset
from ..detection.detectors import Detector
from ..errors import SmoothInvError
from ..labels import eligible
from ..reporting.pictures import save_inversion_pictures
from .denoising import model_denoiser
from ..zoo import list_zoo, load_zoo_model

Log = Callable[[str], None]


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P(score of a backdoored model > score of a clean one), ties counting half."""
    if not positive or not negative:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def scan_image(labels: torch.Tensor, target: int | None, seed: int) -> int:
    """Index of the scan image: a seeded pick among test images not of the target class."""
    candidates = torch.nonzero(eligible(labels, -1 if target is None else target)).squeeze(1)
    return int(candidates[torch.randint(len(candidates), (1,), generator=torch.Generator().manual_seed(seed))])


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


def detect_benchmark(detector: Detector, *, names: Sequence[str] | None = None, data_root: str | Path | None = None,
                     clean_images: int = 500, seed: int = 0, pictures: str | Path | None = None,
                     denoiser: str | None = None, log: Log = print) -> dict[str, Any]:
    """Run `detector` on every zoo model (or those `names`); `pictures`: a folder that gets, per
    model, the evidence pictures (reporting.pictures) of the true target and every flagged class,
    in `<model>/class-<c>/`, so each miss can be looked at. `denoiser` (None, "auto", a name or a
    folder; bench.denoising) is T in the scan's smoothed classifier."""
    rows = []
    records = [record for record in list_zoo() if not names or record["name"] in names]
    denoisers = {record["dataset"]: model_denoiser(denoiser, record["dataset"]) for record in records}  # fail early
    for record in records:
        subject = zoo_subject(record, data_root, clean_images, seed)
        log(f"{record['name']}: {detector.name} on {subject.num_classes} classes ...")
        start = time.perf_counter()
        ref = denoisers[record["dataset"]]
        model_detector = detector if ref is None else detector.with_denoiser(ref)
        found = model_detector.detect(subject.model, subject.image, subject.clean_images, subject.clean_labels,
                                      subject.num_classes, seed)
        seconds = time.perf_counter() - start
        backdoored = record["attack"] is not None
        row = {"model": record["name"], "arch": record["arch"], "dataset": record["dataset"], "backdoored": backdoored,
               "true_target": record["target"], "verdict": "backdoored" if found.targets else "clean",
               "flagged": found.targets, "score": round(found.score, 4), "correct": bool(found.targets) == backdoored,
               "target_found": (record["target"] in found.targets) if backdoored else None,
               "seconds": round(seconds, 1), "timed_out": found.timed_out,
               "denoiser": None if ref is None else {"name": ref.name, "sha256": ref.sha256}, **found.extra, "classes": found.classes}
        if pictures is not None:
            for c in sorted(set(found.targets) | ({record["target"]} if backdoored else set())):
                if c in found.evidence:
                    folder = Path(pictures) / record["name"] / f"class-{c}"
                    folder.mkdir(parents=True, exist_ok=True)
                    save_inversion_pictures(folder, *found.evidence[c])
        log(f"{row['model']}: {row['verdict']} {found.targets} (truth: "
            f"{'target ' + str(record['target']) if backdoored else 'clean'}), score {found.score:.2f}, {seconds:.0f}s")
        rows.append(row)
    config = {**detector.describe(), "clean_images": clean_images, "seed": seed, "denoiser": denoiser}
    return {"settings": config, "summary": summarize(rows, detector.name), "rows": rows}


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

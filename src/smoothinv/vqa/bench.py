"""The VQA benchmark: every zoo model through TIJO and the two unimodal inversions, then the
cross-validated AUC of each method's trojan classifier on the dual-key, visual-only and text-only
splits (each split: the clean models against that kind's trojaned ones), how often the suspected
target, word and box are the planted ones, and seconds per model. Resumable: results are kept per
model and method in the output file, written after each model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import SmoothInvError
from ..files import atomic_write_text
from .classifier import TrojanClassifier, cross_validated, feature
from .inversion import INVERSIONS, InversionSettings
from .trojans import KINDS
from .zoo import STORE, load_support, load_zoo_model, read_manifest

METHODS = ("tijo", "feature", "token")


def run_vqa_bench(out: Path, *, store: Path = STORE, methods: tuple[str, ...] = METHODS,
                  settings: InversionSettings = InversionSettings(), names: list[str] | None = None,
                  merge: tuple[Path, ...] = (), log: Callable[[str], None] = lambda _: None) -> dict:
    """Invert every zoo model (or `names`) with each method, resuming from `out` and taking the
    results of earlier runs `merge` (shards; their settings must be these); the report."""
    for m in methods:
        INVERSIONS.get(m)
    manifest = read_manifest(store)["models"]
    if not manifest:
        raise SmoothInvError(f"the VQA zoo in {store} holds no models; build it first")
    config = {"steps": settings.steps, "lr": settings.lr, "betas": list(settings.betas)}
    report = {"settings": config, "results": {}}
    if out.is_file():
        earlier = _read_report(out, "exists and is not a VQA benchmark report; choose another output file")
        if earlier.get("settings") == config:
            report["results"] = earlier["results"]
    for shard in merge:
        part = _read_report(shard, "is not a VQA benchmark report")
        if part.get("settings") != config:
            raise SmoothInvError(f"{shard} ran with other settings ({part.get('settings')}); merge only runs with {config}")
        for name, done in part["results"].items():
            report["results"].setdefault(name, {}).update(done)
    support, _ = load_support(store)
    chosen = sorted(manifest) if names is None else names
    for i, name in enumerate(chosen, 1):
        done = report["results"].get(name, {})
        todo = [m for m in methods if m not in done]
        if not todo:
            continue
        model, entry = load_zoo_model(name, store)
        for m in todo:
            started = time.perf_counter()
            result = INVERSIONS.get(m)(settings).sweep(model, support)
            summary = {k: v for k, v in result.to_dict().items() if k != "targets"}
            summary["seconds"] = round(time.perf_counter() - started, 2)
            done[m] = summary
        report["results"][name] = done
        atomic_write_text(out, json.dumps(report, indent=1) + "\n")
        log(f"[{i}/{len(chosen)}] {name}: " + ", ".join(f"{m} loss {done[m]['min_loss']:.4f} → {done[m]['suspected_target']}"
                                                       for m in methods))
    report["table"] = auc_table(report["results"], manifest, methods)
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    return report


def _read_report(path: Path, problem: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise SmoothInvError(f"{path} {problem}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise SmoothInvError(f"{path} {problem}")
    return data


def auc_table(results: dict, manifest: dict, methods: tuple[str, ...] = METHODS) -> dict:
    """Per split and method: cross-validated AUC and CE, target/word/box recovery, seconds per model."""
    table = {}
    clean = [n for n in results if manifest[n]["kind"] == "clean"]
    for kind in KINDS:
        trojaned = [n for n in results if manifest[n]["kind"] == kind]
        if len(clean) < 5 or len(trojaned) < 5:
            continue
        names = clean + trojaned
        labels = np.array([0] * len(clean) + [1] * len(trojaned))
        row = {}
        for m in methods:
            feats = np.array([feature(results[n][m]["min_loss"]) for n in names])
            cv = cross_validated(feats, labels)
            hits = [results[n][m]["suspected_target"] == manifest[n]["trojan"]["target"] for n in trojaned]
            cv["target_found"] = round(float(np.mean(hits)), 4)
            if m != "feature" and kind != "visual":
                cv["word_found"] = round(float(np.mean([results[n][m]["word"] == manifest[n]["trojan"]["word"]
                                                        for n in trojaned])), 4)
            if m != "token" and kind != "text":
                cv["box_found"] = round(float(np.mean([results[n][m]["box"] == manifest[n]["trojan"]["patch"]["cell"]
                                                       for n in trojaned])), 4)
            cv["seconds_per_model"] = round(float(np.mean([results[n][m]["seconds"] for n in names])), 2)
            row[m] = cv
        table[kind] = {"clean": len(clean), "trojaned": len(trojaned), "methods": row}
    return table


def fit_classifier(results: dict, manifest: dict, method: str = "tijo") -> TrojanClassifier:
    """The shipped classifier: fit on every zoo model (clean against any trojan) with `method`'s feature."""
    names = [n for n in results if method in results[n]]
    feats = np.array([feature(results[n][method]["min_loss"]) for n in names])
    labels = np.array([int(manifest[n]["kind"] != "clean") for n in names])
    return TrojanClassifier.fit(feats, labels)

"""`smoothinv vqa`: the scaled-down TrojVQA zoo and TIJO's dual-key trojan detection."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import torch
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..data.datasets import load_fashion_mnist
from ..errors import SmoothInvError
from ..files import atomic_write_text, sha256_file
from ..reporting.outputs import atomic_directory, check_destination, check_file_destination
from ..vqa import INVERSIONS, STORE, InversionSettings, TrojanClassifier, build_vqa_zoo, load_support
from ..vqa.bench import METHODS, fit_classifier, run_vqa_bench
from ..vqa.models import load_vqa_model
from ..vqa.report import picture, render_html
from ..vqa.zoo import load_zoo_model, read_manifest

err = Console(stderr=True)
stdout = Console(soft_wrap=True)
CLASSIFIER_FILE = "classifier.json"


def _log(line: str) -> None:
    err.print(escape(line), highlight=False, soft_wrap=True)


@click.group("vqa")
def vqa_group() -> None:
    """Dual-key VQA backdoors (a scaled-down TrojVQA zoo) and their detection with TIJO."""


@vqa_group.command("build-zoo")
@click.option("--data-root", type=click.Path(path_type=Path), help="Folder holding fashion-mnist/ (default: $SMOOTHINV_DATA).")
@click.option("--store", type=click.Path(path_type=Path), default=STORE, show_default="the package's store",
              help="Where the zoo is written; a rerun finishes what an interrupted one left.")
@click.option("--model", "names", multiple=True, help="Build only these models (repeatable), e.g. dual-000.")
@click.option("--shared-only", is_flag=True, help="Build only the detector, the support set and the object sample.")
@click.option("--threads", type=click.IntRange(1, 256), help="torch threads (default: torch's choice).")
def build_zoo_command(data_root: Path | None, store: Path, names: tuple[str, ...], shared_only: bool,
                      threads: int | None) -> None:
    """Train the detector and every VQA zoo model not built yet (resumable)."""
    if threads:
        torch.set_num_threads(threads)
    data = load_fashion_mnist(data_root)
    train = (torch.from_numpy(data.train_images[..., 0]), torch.from_numpy(data.train_labels))
    test = (torch.from_numpy(data.test_images[..., 0]), torch.from_numpy(data.test_labels))
    chosen = [] if shared_only else list(names) or None
    manifest = build_vqa_zoo(train, test, Path(store), names=chosen, log=_log)
    stdout.print(f"{len(manifest['models'])} model(s) in {escape(str(store))}")


@vqa_group.command("invert")
@click.option("--model", "model_ref", required=True,
              help="A VQA zoo model name (e.g. dual-003) or a VQA model file (safetensors, as the zoo stores them).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory (written atomically).")
@click.option("--method", default="tijo", show_default=True, type=click.Choice(INVERSIONS.names()),
              help="tijo: feature trigger and word jointly; feature: the feature trigger alone; token: the word alone.")
@click.option("--steps", default=InversionSettings.steps, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--store", type=click.Path(path_type=Path), default=STORE, show_default="the package's store",
              help="The zoo whose support set (and trojan classifier) to use.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def invert_command(model_ref: str, out: Path, method: str, steps: int, store: Path, overwrite: bool) -> None:
    """Invert a dual-key trigger toward every answer; report the suspected target, word, box and p(trojaned)."""
    started = time.perf_counter()
    path = Path(model_ref)
    inputs = (path,) if path.exists() else ()
    check_destination(out, overwrite, inputs=inputs)
    if path.exists():
        model, meta = load_vqa_model(path)
        described = {"path": str(path), "sha256": sha256_file(path), "arch": meta["arch"]}
    else:
        model, entry = load_zoo_model(model_ref, Path(store))
        described = {"zoo": model_ref, "arch": entry["arch"], "kind": entry["kind"], "trojan": entry["trojan"]}
    support, scenes = load_support(Path(store))
    classifier = _classifier(Path(store), method)
    result = INVERSIONS.get(method)(InversionSettings(steps=steps)).sweep(model, support)
    record = result.to_dict()
    record.update({"model": model_ref, "described": described,
                   "trojan_probability": None if classifier is None else classifier.probability([result.min_loss]),
                   "support_examples": len(support), "steps": steps, "seconds": round(time.perf_counter() - started, 2),
                   "smoothinv_version": __version__, "command": "smoothinv " + " ".join(sys.argv[1:])})
    with atomic_directory(out, overwrite, inputs=inputs, kind="vqa-invert") as tmp:
        atomic_write_text(tmp / "result.json", json.dumps(record, indent=1) + "\n")
        picture(record, scenes).save(tmp / "picture.png")
        atomic_write_text(tmp / "report.html", render_html(record))
    prob = "unknown (no classifier)" if record["trojan_probability"] is None else f"{record['trojan_probability']:.3f}"
    stdout.print(escape(f"{model_ref}: suspected target '{record['suspected_target']}'"
                        + (f", word '{record['word']}'" if record["word"] else "")
                        + ("" if record["box"] is None else f", box {record['box']}")
                        + f"; min loss {record['min_loss']:.4f}; p(trojaned) {prob}; {record['seconds']}s"), highlight=False)


def _classifier(store: Path, method: str) -> TrojanClassifier | None:
    path = store / CLASSIFIER_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise SmoothInvError(f"{path} is not valid JSON; rerun `smoothinv vqa bench --write-classifier`") from None
    if not isinstance(data, dict) or method not in data:
        return None
    return TrojanClassifier.from_dict(data[method])


@vqa_group.command("bench")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Results JSON; an earlier run's file with the same settings is resumed.")
@click.option("--method", "methods", multiple=True, type=click.Choice(METHODS), help="Methods (default: all three).")
@click.option("--steps", default=InversionSettings.steps, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--store", type=click.Path(path_type=Path), default=STORE, show_default="the package's store")
@click.option("--model", "names", multiple=True, help="Only these zoo models (repeatable; for shards run side by side).")
@click.option("--merge", "merge", multiple=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Take the results of another run's file (a shard with the same settings; repeatable).")
@click.option("--write-classifier", is_flag=True,
              help="Fit each method's trojan classifier on the whole zoo and write it to the store (used by `vqa invert`).")
def bench_command(out: Path, methods: tuple[str, ...], steps: int, store: Path, names: tuple[str, ...],
                  merge: tuple[Path, ...], write_classifier: bool) -> None:
    """Every zoo model through TIJO and the unimodal inversions; cross-validated AUC per split."""
    if not out.is_file():
        check_file_destination(out)
    chosen = methods or METHODS
    report = run_vqa_bench(out, store=Path(store), methods=chosen, settings=InversionSettings(steps=steps),
                           names=list(names) or None, merge=merge, log=_log)
    for kind, row in report["table"].items():
        stdout.print(f"{kind}: {row['clean']} clean vs {row['trojaned']} trojaned")
        for m, cell in row["methods"].items():
            extra = ", ".join(f"{k} {cell[k]:.2f}" for k in ("target_found", "word_found", "box_found") if k in cell)
            stdout.print(f"  {m:8s} AUC {cell['auc']:.3f} ± {cell['auc_std']:.3f}, CE {cell['cross_entropy']:.3f}, "
                         f"{extra}, {cell['seconds_per_model']}s/model")
    if write_classifier:
        manifest = read_manifest(Path(store))["models"]
        fitted = {m: fit_classifier(report["results"], manifest, m).to_dict() for m in chosen}
        atomic_write_text(Path(store) / CLASSIFIER_FILE, json.dumps(fitted, indent=1) + "\n")
        stdout.print(f"wrote {escape(str(Path(store) / CLASSIFIER_FILE))}")


"""`smoothinv repair`: fine-tune a backdoored model so that its recovered triggers no longer work."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import torch
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..data import CleanSet, load_clean_set
from ..detection import ScanSettings, scan
from ..errors import SmoothInvError
from ..methods.base import check_target
from ..models.loading import save_model
from ..repair import HOLDOUT, REPAIRS, FineTuneRecipe, Findings, load_perturbation, repair_model
from ..repair.findings import scan_result_findings
from ..repair.recovered import scan_findings
from ..reporting.outputs import atomic_directory, check_destination
from ..reporting.repair_report import MODEL_FILE, repair_record, write_repair
from .options import Subject, load_subject, model_options
from .params import BOUNDS

err = Console(stderr=True)
stdout = Console(soft_wrap=True)
SCAN_CLEAN_IMAGES = 500


@click.command("repair")
@model_options
@click.option("--clean", required=True, type=click.Path(path_type=Path),
              help="Clean labelled images (ImageFolder or .npz): part fine-tunes the model, the rest measures it.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory (written atomically).")
@click.option("--scan", "scan_dir", type=click.Path(path_type=Path),
              help="Output directory of `smoothinv scan` for this model: its flagged classes and recovered triggers. "
                   "Without it (and without --trigger) the model is scanned first.")
@click.option("--trigger", "trigger_files", multiple=True, type=click.Path(path_type=Path),
              help="A recovered additive perturbation (.npy, C x H x W, as `invert` writes), toward --target (repeatable).")
@click.option("--target", type=int, help="The class the --trigger perturbations lead to.")
@click.option("--method", default="unlearn", show_default=True, type=click.Choice(REPAIRS.names()),
              help="unlearn: the recovered triggers, unlearned; nc-unlearn: Neural Cleanse's own triggers, unlearned; "
                   "fine-pruning: prune dormant channels, then fine-tune; fine-tune: plain fine-tuning (the control).")
@click.option("--epochs", default=FineTuneRecipe.epochs, show_default=True, type=click.IntRange(1, 1000))
@click.option("--lr", default=FineTuneRecipe.lr, show_default=True, type=click.FloatRange(1e-6, 1.0))
@click.option("--holdout", default=HOLDOUT, show_default=True, type=click.FloatRange(0.01, 0.99),
              help="Share of the clean set kept out of fine-tuning to measure the repair on.")
@click.option("--clean-limit", type=BOUNDS.images, help="Use at most this many clean images (a seeded subset).")
@click.option("--seed", default=0, show_default=True, type=BOUNDS.seed)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def repair_command(**opts: Any) -> None:
    """Remove a found backdoor: fine-tune on clean images, with the recovered triggers unlearned."""
    started = time.perf_counter()
    inputs = (opts["model_path"], opts["clean"], *opts["trigger_files"],
              *([] if opts["scan_dir"] is None else [opts["scan_dir"]]))
    check_destination(opts["out"], opts["overwrite"], inputs=inputs)
    if opts["trigger_files"] and opts["target"] is None:
        raise SmoothInvError("--trigger needs --target: the class the perturbations lead to")
    subject = load_subject(opts)
    if subject.loaded.arch is None:
        raise SmoothInvError(f"cannot save a repaired copy of {subject.path.name}: its architecture is unknown "
                             f"({subject.loaded.format}); give the weights as safetensors or a state_dict with --arch")
    size = subject.input_size
    clean = load_clean_set(opts["clean"], size=size, channels=subject.channels, limit=opts["clean_limit"],
                           seed=opts["seed"])
    if len(clean) == 0:
        raise SmoothInvError(f"clean set {opts['clean']} holds no images")
    clean.check_labels(subject.num_classes)
    size = size or tuple(clean.images.shape[2:])
    findings = _findings(opts, subject, clean, (subject.channels, *size))
    err.print(escape(f"repairing {subject.path.name} ({opts['method']}) toward class(es) "
                     f"{', '.join(map(str, findings.targets))} with {len(findings.recovered)} recovered trigger(s)"),
              highlight=False)
    recipe = FineTuneRecipe(epochs=opts["epochs"], lr=opts["lr"])
    result = repair_model(subject.loaded.module, clean.images, clean.labels, findings, method=opts["method"],
                          recipe=recipe, holdout=opts["holdout"], seed=opts["seed"],
                          progress=lambda note: err.print(escape(note), style="dim", highlight=False))
    context = {"smoothinv_version": __version__, "command": "smoothinv " + " ".join(sys.argv[1:]),
               "model": subject.describe(), "clean_set": {"path": str(opts["clean"]), "images": len(clean)},
               "scan": None if opts["scan_dir"] is None else str(opts["scan_dir"])}
    record = repair_record(result, context)
    loaded = subject.loaded
    with atomic_directory(opts["out"], opts["overwrite"], inputs=inputs, kind="repair") as tmp:
        save_model(tmp / MODEL_FILE, result.repaired.model, arch=loaded.arch, num_classes=subject.num_classes,
                   input_size=tuple(size), channels=subject.channels, mean=loaded.mean, std=loaded.std,
                   extra_metadata={**loaded.extra_metadata(),
                                   "repaired_by": f"smoothinv {__version__} repair --method {opts['method']}",
                                   "repaired_from_sha256": subject.sha256})
        write_repair(tmp, record)
    b, a = result.before, result.after
    stdout.print(f"clean accuracy {b.clean_accuracy:.1%} -> {a.clean_accuracy:.1%} on {len(result.split.evaluate)} "
                 "held-out images")
    for name, value in b.asr.items():
        stdout.print(escape(f"ASR of {name}: {value:.1%} -> {a.asr.get(name, float('nan')):.1%}"), highlight=False)
    stdout.print(f"wrote {escape(str(opts['out']))}/{MODEL_FILE} and report.html in {time.perf_counter() - started:.0f}s")
    for warning in record["warnings"]:
        err.print(escape(f"warning: {warning}"), style="yellow", highlight=False, soft_wrap=True)


def _findings(opts: dict[str, Any], subject: Subject, clean: CleanSet, shape: tuple[int, ...]) -> Findings:
    """The targets and recovered triggers: from --scan and --trigger, else from a scan run now."""
    targets: list[int] = []
    recovered = []
    if opts["scan_dir"] is not None:
        targets, recovered = scan_findings(opts["scan_dir"], subject.sha256, shape)
    if opts["trigger_files"]:
        check_target(torch.tensor([opts["target"]]), subject.num_classes)
        recovered += [load_perturbation(p, shape, opts["target"]) for p in opts["trigger_files"]]
        targets.append(opts["target"])
    if targets:
        return Findings(tuple(sorted(set(targets))), tuple(recovered))
    own_target = REPAIRS.get(opts["method"]).finds_own_target  # InverTune can identify the target itself
    if len(clean) < 2:
        if own_target:
            return Findings(())
        raise SmoothInvError("scanning needs at least 2 clean images (one to synthesise from, others for transfer)")
    err.print("no --scan or --trigger given: scanning the model first (default settings)", style="yellow")
    order = torch.randperm(len(clean), generator=torch.Generator().manual_seed(opts["seed"]))
    image, others = clean.images[order[0]], order[1 : 1 + SCAN_CLEAN_IMAGES]
    result = scan(subject.module, [image], clean.images[others], clean.labels[others], subject.num_classes,
                  ScanSettings(seed=opts["seed"]))
    findings = scan_result_findings(result)
    if not findings.targets:
        if own_target:
            err.print(f"the scan flagged no class; {opts['method']} identifies the target itself", style="yellow")
            return findings
        raise SmoothInvError("the scan flagged no class (verdict clean): there is no backdoor to repair; "
                             "pass --trigger and --target to repair toward a class anyway")
    return findings
